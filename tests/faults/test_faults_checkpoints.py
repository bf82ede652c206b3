"""Hostile and corrupt model files (issue #22): each case here was found by an adversarial run and must end in one of
our errors (``CheckpointError`` for model files, ``InputValidationError`` for arguments), never in an allocation of
the file's choosing, a crash or another exception type. Files are built inside each test."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from model_file_builders import (
    rewrite_zip_record,
    save_pth,
    save_safetensors_file,
    small_state_dict,
    tiny_onnx,
    training_checkpoint,
    write_engine,
)

from sschsr_deploy.checkpoint import read_checkpoint, safe_torch_load
from sschsr_deploy.engine.sidecar import EngineCompatibilityError, read_sidecar
from sschsr_deploy.errors import CheckpointError, InputValidationError, SSCHSRError

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]


class _Call:
    """Pickles as ``fn(*args)``: how a hostile file makes the unpickler call an allowed global with its arguments."""

    def __init__(self, fn: object, *args: object) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _hostile(tmp_path: Path, payload: object, zip_format: bool) -> Path:
    obj = {**small_state_dict(), "payload": payload}
    return save_pth(obj, tmp_path / f"hostile_{'zip' if zip_format else 'legacy'}.pth", zip_format)


# ---------------------------------------------------------------------------------------------------------------------
# 1. allocations of the file's choosing


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_bytearray_size_beyond_the_file_is_refused(tmp_path, zip_format):
    # was: a 5 KB file made the loader allocate 512 MiB (and 2 GiB, 100 GB, ... on request)
    path = _hostile(tmp_path, _Call(bytearray, 1 << 29), zip_format)
    with pytest.raises(CheckpointError, match=r"bytearray\(\) asks for 536870912 bytes, more than the \d+-byte file"):
        read_checkpoint(path)


def test_many_small_bytearrays_share_one_budget(tmp_path):
    size = 2048
    path = _hostile(tmp_path, [_Call(bytearray, size) for _ in range(1000)], True)  # 2 MB from a ~10 KB file
    with pytest.raises(CheckpointError, match="already granted"):
        safe_torch_load(path)


@pytest.mark.parametrize("cls", [torch.Tensor, torch.FloatTensor, torch.FloatStorage, torch.UntypedStorage],
                         ids=lambda c: c.__name__)
def test_tensor_and_storage_types_are_not_callable_from_a_pickle(tmp_path, cls):
    # was: torch.Tensor(n) / torch.FloatStorage(n) were allow-listed as callables and allocated n elements
    from sschsr_deploy.checkpoint import UnknownObject

    path = _hostile(tmp_path, _Call(cls, 1 << 28), True)
    try:
        payload = safe_torch_load(path)["payload"]
    except CheckpointError as exc:
        assert "directly" in str(exc)
    except TypeError as exc:  # torch resolves storage names itself, to a type that is not callable
        assert "not callable" in str(exc)
        with pytest.raises(CheckpointError, match="not callable"):
            read_checkpoint(path)
    else:
        assert isinstance(payload, UnknownObject)  # not allow-listed: an inert placeholder, nothing allocated


def _legacy_with_numel(tmp_path: Path, numel: int) -> Path:
    src = save_pth({"w": torch.zeros(77)}, tmp_path / "legacy.pth", zip_format=False)
    data = src.read_bytes()
    assert data.count(b"K\x4dNt") == 1  # the storage record: ..., numel 77, no view
    out = tmp_path / "legacy_numel.pth"
    out.write_bytes(data.replace(b"K\x4dNt", b"J" + numel.to_bytes(4, "little") + b"Nt"))
    return out


def test_legacy_storage_larger_than_the_file_is_refused_before_allocation(tmp_path):
    # was: torch allocated numel elements (here 256 MiB; up to 8 GiB with this field) before noticing that the file
    # does not hold them
    path = _legacy_with_numel(tmp_path, 1 << 26)
    with pytest.raises(CheckpointError, match=r"storage '\d+' asks for 268435456 bytes, more than the"):
        read_checkpoint(path)


def test_stride_zero_view_larger_than_its_storage_is_refused(tmp_path):
    # was: size 2**30 with stride 0 over a 77-element storage loaded as a 4 GiB tensor (materialised by any copy)
    src = save_pth({"w": torch.zeros(77)}, tmp_path / "src.pth")
    import zipfile

    with zipfile.ZipFile(src) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    size_stride = b"K\x4d\x85q\x08K\x01\x85"
    assert pkl.count(size_stride) == 1
    hostile = pkl.replace(size_stride, b"J\x00\x00\x00\x40\x85q\x08K\x00\x85")
    path = rewrite_zip_record(src, tmp_path / "stride0.pth", "data.pkl", hostile)
    with pytest.raises(CheckpointError, match="needs 4294967296 bytes but its storage holds 308"):
        read_checkpoint(path)


def test_zip_records_claiming_more_than_the_archive_can_hold_are_refused(tmp_path):
    import zipfile

    src = save_pth(small_state_dict(), tmp_path / "src.pth")
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        zout.writestr("src/data/zeros", bytes(64 << 20))  # 64 MiB of zeros deflate to ~64 KB
    with pytest.raises(CheckpointError, match="zip records declare"):
        read_checkpoint(bomb)


def _run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_deeply_nested_dict_key_does_not_crash_the_process(tmp_path, zip_format):
    # was: a 200 KB pickle whose dict key is a tuple nested 200000 deep segfaulted the interpreter (hashing it
    # recurses in C); the load runs in a child so that the crash, if it came back, fails this test instead of pytest
    deep = b"\x80\x02}(N" + b"\x85" * 200_000 + b"K\x01u."
    if zip_format:
        src = save_pth(small_state_dict(), tmp_path / "src.pth")
        path = rewrite_zip_record(src, tmp_path / "deep.pth", "data.pkl", deep)
    else:
        header = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {}))
        path = tmp_path / "deep.pth"
        path.write_bytes(header + deep + pickle.dumps([], protocol=2))
    proc = _run_child(f"""
        from sschsr_deploy.checkpoint import read_checkpoint
        from sschsr_deploy.errors import CheckpointError
        try:
            read_checkpoint({str(path)!r})
        except CheckpointError as exc:
            print("CheckpointError:", exc)
    """)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-2000:]}"
    assert "CheckpointError:" in proc.stdout and "nested more than 32 levels" in proc.stdout


def test_deep_mark_nesting_is_refused(tmp_path):
    src = save_pth(small_state_dict(), tmp_path / "src.pth")
    path = rewrite_zip_record(src, tmp_path / "marks.pth", "data.pkl", b"\x80\x02" + b"(" * 100_000 + b"N.")
    with pytest.raises(CheckpointError, match="nested more than 256 levels"):
        read_checkpoint(path)


def test_forced_weights_only_mode_runs_the_same_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    path = _legacy_with_numel(tmp_path, 1 << 26)
    with pytest.raises(CheckpointError, match="more than the"):
        read_checkpoint(path)
    clean = save_pth(training_checkpoint(small_state_dict()), tmp_path / "clean.pth")
    assert set(read_checkpoint(clean)) == set(small_state_dict())


def test_real_checkpoints_still_load(tmp_path):
    sd = small_state_dict()
    for zip_format in (True, False):
        for protocol in (2, 4):
            path = tmp_path / f"ok_{zip_format}_{protocol}.pth"
            torch.save({**training_checkpoint(sd), "names": {"a", "b"}, "key": {("x", 1): 2}}, path,
                       _use_new_zipfile_serialization=zip_format, pickle_protocol=protocol)
            loaded = read_checkpoint(path)
            assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
            assert isinstance(torch.nn.Parameter(loaded["conv.weight"]), torch.nn.Parameter)


# ---------------------------------------------------------------------------------------------------------------------
# 2. damaged archives: every error of zipfile / struct / pickle is a CheckpointError


def test_damaged_zip_directory_is_a_checkpoint_error(tmp_path):
    # was: UnicodeDecodeError (an internal error): the UTF-8 flag set on a file name that is not UTF-8
    data = bytearray(save_pth(small_state_dict(), tmp_path / "src.pth").read_bytes())
    at = data.index(b"PK\x01\x02")
    data[at + 9] |= 0x08  # central directory entry: general purpose flag bit 11 (the name is UTF-8)
    data[at + 46] = 0xFF
    path = tmp_path / "damaged.pth"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt.*UnicodeDecodeError"):
        read_checkpoint(path)


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9, 0.999])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_checkpoints_are_checkpoint_errors(tmp_path, cut, zip_format):
    data = save_pth(training_checkpoint(small_state_dict()), tmp_path / "src.pth", zip_format).read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_pre_0_4_tar_checkpoints_are_refused_clearly(tmp_path):
    import tarfile

    path = tmp_path / "old.pth"
    with tarfile.open(path, "w") as tar:
        (tmp_path / "storages").write_bytes(b"\x80\x02K\x01.")
        tar.add(tmp_path / "storages", arcname="storages")
    with pytest.raises(CheckpointError, match="pre-0.4 PyTorch tar-format"):
        read_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------------------
# 3. non-finite weights


def _tiny_weights_with(tmp_path: Path, value: float, fmt: str) -> Path:
    from sschsr_deploy.checkpoint import load_safetensors
    from sschsr_deploy.pretrained import shipped_weights

    sd, meta = load_safetensors(shipped_weights("tiny", 4))
    sd = {k: v.clone() for k, v in sd.items()}
    key = sorted(k for k, v in sd.items() if v.is_floating_point() and v.numel() > 3)[0]
    sd[key].view(-1)[:3] = value
    if fmt == "safetensors":
        return save_safetensors_file(sd, tmp_path / "nan.safetensors", meta)
    return save_pth(sd, tmp_path / "nan.pth")


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_refused_with_count_and_names(tmp_path, fmt, value):
    # was: the model loaded, and every output was NaN with only a warning about the output
    from sschsr_deploy.weights import load_model

    path = _tiny_weights_with(tmp_path, value, fmt)
    args = (path,) if fmt == "safetensors" else ("tiny", path)
    with pytest.raises(CheckpointError, match=r"holds 3 non-finite weight values \(NaN or infinity\) in 1 tensors: "
                                              r"\S+ \(3\)"):
        load_model(*args)


def test_non_finite_onnx_initializers_are_refused(tmp_path):
    from sschsr_deploy.runtime.ort_backend import OnnxRuntimeBackend

    bias = torch.zeros(31)
    bias[[0, 5]] = float("nan")
    path = tiny_onnx(tmp_path / "nan.onnx", bias)
    with pytest.raises(InputValidationError, match=r"2 non-finite weight values .* bias \(2\)"):
        OnnxRuntimeBackend(path)


# ---------------------------------------------------------------------------------------------------------------------
# 4. / 5. arguments: device and scale


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda:-1", "gpu0", "mps", ""])
def test_unknown_device_is_an_input_error_naming_the_accepted_ones(device):
    # was: torch.device("tpu") raised a bare RuntimeError (an internal error in the CLI)
    from sschsr_deploy.runtime.backend_base import resolve_device

    with pytest.raises(InputValidationError, match=r"'cpu', 'cuda', 'cuda:N' or 'auto'"):
        resolve_device(device)
    assert resolve_device("auto").type in ("cpu", "cuda") and resolve_device("CPU") == torch.device("cpu")


def test_unknown_device_through_the_backends(tmp_path):
    from sschsr_deploy.runtime.backends import create_backend
    from sschsr_deploy.weights import load_model

    model, _ = load_model("tiny-x4")
    for name, target in (("torch", model), ("onnxruntime", tiny_onnx(tmp_path / "m.onnx")),
                         ("tensorrt", write_engine(tmp_path / "m.engine"))):
        with pytest.raises(InputValidationError, match="'cuda:N' or 'auto'"):
            create_backend(name, target, device="tpu")


@pytest.mark.parametrize("scale", [0, -4, 10**9, 2.5, True, "4"])
def test_scale_that_is_not_a_positive_integer_says_so(scale):
    # was: "no shipped weights named 'tiny-x0'" / "no shipped weights ... at x0"
    from sschsr_deploy.pretrained import shipped_weights
    from sschsr_deploy.weights import load_model, shipped_name

    match = r"scale must be a positive integer from 1 to 64"
    with pytest.raises(InputValidationError, match=match):
        shipped_name("tiny", scale)
    with pytest.raises(InputValidationError, match=match):
        shipped_weights("tiny", scale)
    with pytest.raises(InputValidationError, match=match):
        load_model("tiny", random_weights=True, scale=scale)


def test_an_unshipped_but_valid_scale_still_names_the_shipped_models():
    from sschsr_deploy.weights import resolve_shipped, shipped_name

    assert shipped_name("tiny", 4) == "tiny-x4"
    with pytest.raises(InputValidationError, match=r"no shipped weights named 'tiny-x16' \(shipped: tiny-x4, tiny-x8"):
        resolve_shipped(shipped_name("tiny", 16))


# ---------------------------------------------------------------------------------------------------------------------
# 6. exported models: ONNX files and engine sidecars


@pytest.mark.parametrize("meta, match", [
    ({"bands": "0"}, "takes 31 bands but its metadata says 0"),
    ({"batch_min": "3", "batch_max": "2"}, r"impossible limits \(batch range 3..2\)"),
    ({"batch_min": "-1"}, "impossible limits"),
    ({"rgb_bands": "0,1,99"}, "rgb_bands"),
    ({"scale": "0"}, "metadata scale='0' is not valid"),
    ({"tile_min": "0x0", "tile_max": "8x8"}, "metadata tile_min is 0x0"),
])
def test_onnx_metadata_that_no_export_writes_is_refused(tmp_path, meta, match):
    from sschsr_deploy.runtime.ort_backend import OnnxRuntimeBackend

    with pytest.raises(InputValidationError, match=match):
        OnnxRuntimeBackend(tiny_onnx(tmp_path / "m.onnx", **meta))


def test_onnx_with_external_data_is_refused(tmp_path):
    import onnx

    from sschsr_deploy.runtime.ort_backend import OnnxRuntimeBackend

    path = tiny_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    with pytest.raises(InputValidationError, match="external data"):
        OnnxRuntimeBackend(path)


@pytest.mark.parametrize("cut", [10, 100, 400, -20, -1])
def test_truncated_onnx_is_one_of_our_errors(tmp_path, cut):
    from sschsr_deploy.runtime.ort_backend import OnnxRuntimeBackend

    data = tiny_onnx(tmp_path / "m.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:cut])
    with pytest.raises(SSCHSRError):
        OnnxRuntimeBackend(path)


@pytest.mark.parametrize("text, match", [
    ("[" * 100_000 + "]" * 100_000, "not a readable JSON sidecar: RecursionError"),
    (b"\xff\xfe{}", "not a readable JSON sidecar"),
    ('{"format": 1, "plugins": ["a"]}', "'plugins' is not a map of strings"),
    ('{"format": 1, "onnx": {"bands": 31}}', "'onnx' is not a map of strings"),
    ('{"format": "1"}', "format '1' is not an integer"),
    ('{"format": 1, "build": {"batch_profiles": [[0, 1]]}}', "batch_profiles"),
    ('{"format": 1, "build": {"dims": {"height": [8, 4, 2]}}}', "build.dims"),
    ('{"format": 1, "engine_sha256": 5}', "engine_sha256 is a int"),
], ids=["deep", "not-utf8", "plugins-list", "onnx-int", "format-str", "profiles", "dims", "sha-int"])
def test_damaged_engine_sidecar_is_an_engine_error(tmp_path, text, match):
    # was: RecursionError from a deeply nested sidecar, AttributeError / TypeError / ValueError from wrong types
    engine = write_engine(tmp_path / "m.engine")
    side = engine.with_name(engine.name + ".json")
    side.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(EngineCompatibilityError, match=match):
        read_sidecar(engine)


def test_valid_sidecar_reads(tmp_path):
    side = read_sidecar(write_engine(tmp_path / "m.engine"))
    assert side["format"] == 1 and json.dumps(side)
