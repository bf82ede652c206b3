"""INT8 groundwork (:mod:`sschsr_deploy.engine.quantize`): calibration checks, stage selection from the exporter's
module scopes, and a real QDQ quantization of the exported tiny network run on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from sschsr_deploy.engine.quantize import (  # noqa: E402
    CalibrationError,
    calibration_feeds,
    check_calibration,
    nodes_in_stages,
    quantize_int8,
)

NAMES = ["a", "b"]


def _feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: rng.random((1, 3, 8, 8), dtype=np.float32) for k in NAMES} for _ in range(n)]


@pytest.mark.parametrize("case, match", [
    ("empty", "no calibration data"),
    ("few", "at least 4"),
    ("nan", "NaN"),
    ("constant", "constant"),
    ("same", "same b"),
    ("missing", "lacks"),
])
def test_degenerate_calibration_is_refused(case, match):
    feeds = _feeds(5)
    if case == "empty":
        feeds = []
    elif case == "few":
        feeds = feeds[:2]
    elif case == "nan":
        feeds[3]["a"][0, 0, 0, 0] = np.nan
    elif case == "constant":
        feeds[1]["b"][:] = 0.5
    elif case == "same":
        for f in feeds:
            f["b"] = feeds[0]["b"].copy()
    elif case == "missing":
        del feeds[2]["a"]
    with pytest.raises(CalibrationError, match=match):
        check_calibration(feeds, NAMES)
    check_calibration(_feeds(5), NAMES)  # and good data passes


def test_stage_selection_follows_the_module_scopes():
    def node(name, op, scopes):
        n = helper.make_node(op, ["x"], [name + "_y"], name=name)
        if scopes:
            n.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=scopes)
        return n

    graph = helper.make_graph([
        node("c1", "Conv", "['', 'model', 'model.decoder', 'model.decoder.res3', 'conv2d_1']"),
        node("c2", "Conv", "['', 'model', 'model.flownet', 'conv2d_2']"),
        node("c3", "Conv", "['', 'model', 'model.hsi_encoder', 'conv2d_3']"),
        node("r4", "Relu", "['', 'model', 'model.decoder', 'relu_4']"),
        node("c5", "Conv", None),
    ], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [])
    model = helper.make_model(graph)
    assert nodes_in_stages(model) == ["c1", "c3"]
    assert nodes_in_stages(model, ("flownet",)) == ["c2"]
    assert nodes_in_stages(model, ("decoder",), ("Conv", "Relu")) == ["c1", "r4"]


def test_quantized_tiny_network_runs_close_to_fp32(tmp_path):
    from sschsr_deploy.engine.onnx import export_onnx
    from sschsr_deploy.weights import load_model

    model, _ = load_model("tiny-x4")
    fp32 = tmp_path / "tiny.onnx"
    export_onnx(model, fp32, tile=(128, 128), batch_range=(1, 1))
    names = [i.name for i in onnx.load(fp32, load_external_data=False).graph.input]
    int8 = quantize_int8(fp32, tmp_path / "tiny_int8.onnx", calibration_feeds(names, 31, (128, 128), count=4))
    q = onnx.load(int8)
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["precision"] == "int8" and meta["int8_stages"] == "decoder,hsi_encoder"
    assert int(meta["int8_nodes"]) > 20 and meta["bands"] == "31"  # the fp32 graph's metadata is kept
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 20
    assert not list(tmp_path.glob(".*partial"))
    feed = calibration_feeds(names, 31, (128, 128), count=1, seed=5000)[0]  # not a calibration scene
    ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    out = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    assert 1e-5 < rel < 0.05, rel  # INT8 moves the output, but not far (measured ~1.5 %)
