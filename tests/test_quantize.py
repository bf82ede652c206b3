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
    check_calibration,
    nodes_in_stages,
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
    assert nodes_in_stages(model) == ["c1"]  # the default: the decoder only
    assert nodes_in_stages(model, ("decoder", "hsi_encoder")) == ["c1", "c3"]
    assert nodes_in_stages(model, ("flownet",)) == ["c2"]
    assert nodes_in_stages(model, ("decoder",), ("Conv", "Relu")) == ["c1", "r4"]


def test_int8_export_then_infer_end_to_end(tmp_path, capsys):
    """``export --precision int8`` → an ONNX file that ``infer --engine`` runs, its sidecar saying int8."""
    import json

    from sschsr_deploy.cli import main

    out = tmp_path / "tiny_int8.onnx"
    assert main(["export", "--weights", "tiny-x4", "--tile", "128", "--precision", "int8", "--calibration-scenes", "4",
                 "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metadata"]["precision"] == "int8" and report["metadata"]["int8_stages"] == "decoder"
    assert 1e-5 < report["int8"]["rel_l2_vs_fp32"] < 0.05  # INT8 moves the output, not far (measured ~1.3 %)
    q = onnx.load(out)
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 20
    meta = {p.key: p.value for p in q.metadata_props}
    assert float(meta["int8_rel_l2_vs_fp32"]) == pytest.approx(report["int8"]["rel_l2_vs_fp32"], rel=1e-5)
    # TensorRT's explicit quantization input: every node of the prepared QDQ graph is in the parser's support matrix
    from sschsr_deploy.engine.graph import prepare_for_tensorrt
    from sschsr_deploy.engine.tensorrt import int8_tolerance
    from sschsr_deploy.engine.trt_support import check_tensorrt_support

    support = check_tensorrt_support(prepare_for_tensorrt(q))  # the ONNX Runtime flavour: u8 with zero points
    assert not support.ok and any("zero point" in p for p in support.type_problems)
    from sschsr_deploy.engine.tensorrt import EngineBuildError, build_engine

    with pytest.raises(EngineBuildError, match="--int8-target tensorrt"):
        build_engine(out, tmp_path / "x.engine")
    assert int8_tolerance(meta) == max(0.02, 2 * max(float(meta["int8_rel_l2_vs_fp32"]),
                                                     float(meta["int8_rel_l2_residual_vs_fp32"])))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_int8.onnx"]  # the fp32 intermediate removed
    rng = np.random.default_rng(0)
    np.save(tmp_path / "lr.npy", rng.random((32, 32, 31), dtype=np.float32))
    import cv2

    cv2.imwrite(str(tmp_path / "ref.png"), (rng.random((128, 128, 3)) * 255).astype(np.uint8))
    infer = ["infer", "--hsi", str(tmp_path / "lr.npy"), "--ref", str(tmp_path / "ref.png"), "--engine", str(out),
             "--quiet"]
    assert main([*infer, "--out", str(tmp_path / "hr.npy"), "--precision", "int8"]) == 0
    side = json.loads((tmp_path / "hr.npy.json").read_text())
    assert side["model"]["precision"] == "int8" and side["precision"] == "int8"
    assert np.isfinite(np.load(tmp_path / "hr.npy")).all()
    assert main([*infer, "--out", str(tmp_path / "hr2.npy"), "--in-flight", "2", "--batch", "2", "--tile", "128",
                 "--overlap", "16"]) == 0  # two windows at once, one session each
    side2 = json.loads((tmp_path / "hr2.npy.json").read_text())
    assert side2["backend"]["in_flight"] == 2 and np.isfinite(np.load(tmp_path / "hr2.npy")).all()
    capsys.readouterr()
    assert main([*infer, "--out", str(tmp_path / "hr3.npy"), "--in-flight", "2"]) == 2  # batch 1 < 2
    assert "--batch 2" in capsys.readouterr().err
    assert main([*infer, "--out", str(tmp_path / "hr32.npy"), "--precision", "fp32"]) == 2  # not what was exported
    assert "runs int8" in capsys.readouterr().err and not (tmp_path / "hr32.npy").exists()
    trt_out = tmp_path / "tiny_int8_trt.onnx"  # TensorRT's explicit-quantization flavour: symmetric s8, float bias
    assert main(["export", "--weights", "tiny-x4", "--tile", "128", "--precision", "int8", "--int8-target",
                 "tensorrt", "--calibration-scenes", "4", "--out", str(trt_out)]) == 0
    trt_report = json.loads(capsys.readouterr().out)
    assert trt_report["metadata"]["int8_target"] == "tensorrt" and trt_report["int8"]["rel_l2_vs_fp32"] < 0.05
    support = check_tensorrt_support(prepare_for_tensorrt(onnx.load(trt_out)))
    assert support.ok, support.summary()
    trt_out.unlink()
    for bad in (["--ops", "custom"], ["--calibration-scenes", "2"]):
        assert main(["export", "--weights", "tiny-x4", "--tile", "128", "--precision", "int8", *bad,
                     "--out", str(tmp_path / "bad.onnx")]) == 2
    assert not (tmp_path / "bad.onnx").exists()


def test_int8_engine_tolerance_needs_the_measured_deviation():
    from sschsr_deploy.engine.tensorrt import EngineBuildError, int8_tolerance

    measured = {"int8_rel_l2_vs_fp32": "0.013", "int8_rel_l2_residual_vs_fp32": "0.04"}
    assert int8_tolerance(measured) == pytest.approx(0.08)
    assert int8_tolerance({"int8_rel_l2_vs_fp32": "0.001", "int8_rel_l2_residual_vs_fp32": "0.002"}) == 0.02
    with pytest.raises(EngineBuildError, match="measured deviation"):
        int8_tolerance({"precision": "int8"})
