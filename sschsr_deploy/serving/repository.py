"""The Triton model repository of the ``sschsr`` model: ``<root>/sschsr/config.pbtxt`` and ``<root>/sschsr/1/model.py``.

The tensors (the contract for clients in any language; ``max_batch_size: 0``, so shapes are given without a batch
dimension and every request is one scene of its own size):

============  ========  ============  ===========================================================================
name          datatype  shape         meaning
============  ========  ============  ===========================================================================
``LR_HSI``    FP32      [h, w, C]     the LR cube, channels last (C = the model's bands, 31 for tiny-x4)
``REF_RGB``   UINT8     [H, W, 3]     the RGB reference, H = h·scale, W = w·scale
``SCALE``     INT32     [1]           optional: the scale (default: the model's own; another one is refused)
``NODATA``    FP32      [1]           optional: the LR cube's no-data value (NaN allowed: NaN pixels are masked)
``HR_HSI``    FP32      [H, W, C]     output: the HR cube, channels last
``METADATA``  UINT8     [n]           output: UTF-8 JSON of the run (model, backend, tiling, timings, shapes)
============  ========  ============  ===========================================================================

With ``batch_requests`` N > 0 (``serve --batch-requests N``) the model is served *batched*: ``max_batch_size: N``,
every tensor gains a leading batch dimension (``LR_HSI`` [b, h, w, C], ``REF_RGB`` [b, H, W, 3], ``SCALE`` /
``NODATA`` [b, 1], ``HR_HSI`` [b, H, W, C], ``METADATA`` [b, n], each scene's JSON padded with spaces to the longest),
``LR_HSI`` / ``REF_RGB`` are ragged (``allow_ragged_batch``: requests of different sizes are queued together) and
Triton's dynamic batcher hands an instance every request queued for it (up to N scenes) in one ``execute``, where
their windows share forward passes (:meth:`SceneHandler.run_many`). A request of b > 1 scenes needs them all of one
size (one tensor). The unbatched interface (the default) is the one above.

The server-side settings (model source, backend, tile, limits…) travel to ``model.py`` as the config's
``parameters`` (strings); :class:`ModelSettings` writes and :meth:`ModelSettings.from_parameters` reads them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sschsr_deploy.errors import InputValidationError

__all__ = ["INPUTS", "MODEL_NAME", "OUTPUTS", "ModelSettings", "model_config", "write_repository"]

MODEL_NAME = "sschsr"
#: name -> (Triton datatype, shape without batch dimension, optional)
INPUTS: dict[str, tuple[str, tuple[int, ...], bool]] = {
    "LR_HSI": ("FP32", (-1, -1, -1), False),
    "REF_RGB": ("UINT8", (-1, -1, 3), False),
    "SCALE": ("INT32", (1,), True),
    "NODATA": ("FP32", (1,), True),
}
OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "HR_HSI": ("FP32", (-1, -1, -1)),
    "METADATA": ("UINT8", (-1,)),
}

_MODEL_TEMPLATE = Path(__file__).with_name("model.py")


@dataclass
class ModelSettings:
    """What the served model runs and refuses.

    Args:
        source: a shipped name (``tiny-x4``), a weights file (``.safetensors`` / ``.pth``; torch backend) or an
            exported model (``.onnx``: onnxruntime; ``.engine`` / ``.plan``: tensorrt).
        backend: ``None`` for the source's default (see :meth:`Pipeline.from_pretrained`).
        device: ``"cpu"`` or ``"cuda"`` (each GPU instance then runs on the GPU Triton gives it).
        instances: model instances (Triton ``instance_group`` count; one scene at a time each).
        tile, batch: the :class:`~sschsr_deploy.runtime.Pipeline` settings (``tile``: an int, ``"default"``,
            ``"auto"`` or ``None`` for whole-image).
        threads: torch / onnxruntime threads per instance (0: leave the library default).
        max_megapixels: HR scenes above this size are refused before any compute.
        min_lr_side: LR scenes with a side below this are refused.
        scale: the scale of an official ``.pth`` (weights only).
        gpus: GPU ids of the instance group (``device="cuda"``; ``None``: all).
        max_queue_delay_us / queue_timeout_us / max_queue_size: Triton's scheduler queue (``dynamic_batching``).
            0 = unset.
        batch_requests: 0 (default): one scene per request and per ``execute`` (``max_batch_size: 0``); N > 0: the
            batched interface (module docstring): up to N queued scenes run together, ``batch`` windows per forward
            pass across them (the throughput path for small scenes on a GPU; measured in docs/serving.md).
        sys_path: folders prepended to ``sys.path`` of the backend's Python (where ``sschsr_deploy`` is found).
        precision: the :class:`~sschsr_deploy.runtime.Pipeline`'s ``precision`` (torch: fp32 / bf16 / fp16; an
            exported model: the precision it must have; ``None``: fp32 / the export's own).
        compile: torch backend: ``torch.compile`` the model; each instance compiles for its one window size (the
            tile; smaller scenes are padded up to it) while it loads, before the server reports ready (minutes on
            a CPU: give ``serve --startup-timeout`` room).
    """

    source: str = "tiny-x4"
    backend: str | None = None
    device: str = "cpu"
    instances: int = 1
    tile: int | str | None = "default"
    batch: int = 1
    threads: int = 0
    max_megapixels: float = 4.0
    min_lr_side: int = 4
    scale: int | None = None
    gpus: list[int] | None = None
    max_queue_delay_us: int = 0
    queue_timeout_us: int = 0
    max_queue_size: int = 0
    batch_requests: int = 0
    sys_path: list[str] = field(default_factory=list)
    precision: str | None = None
    compile: bool = False

    def check(self) -> ModelSettings:
        source = Path(os.fspath(self.source)).expanduser()
        if source.exists():  # the backend runs in another folder: a file is given by its absolute path
            self.source = str(source.resolve())
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise InputValidationError(f"device must be cpu or cuda; got {self.device!r}")
        for name in ("instances", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputValidationError(f"{name} must be a positive integer; got {value!r}")
        for name in ("threads", "min_lr_side", "max_queue_delay_us", "queue_timeout_us", "max_queue_size",
                     "batch_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputValidationError(f"{name} must be a non-negative integer; got {value!r}")
        if self.precision is not None:
            from sschsr_deploy.runtime.torch_backend import normalize_precision

            self.precision = normalize_precision(self.precision)
        if not (float(self.max_megapixels) > 0):
            raise InputValidationError(f"max_megapixels must be positive; got {self.max_megapixels!r}")
        if not isinstance(self.compile, bool):
            raise InputValidationError(f"compile must be true or false; got {self.compile!r}")
        if self.compile:
            from sschsr_deploy.runtime.backends import ENGINE_SUFFIXES

            if Path(str(self.source)).suffix.lower() in ENGINE_SUFFIXES or self.backend not in (None, "torch"):
                raise InputValidationError("compile applies to the torch backend (weights), not to an exported "
                                           "model: its graph is optimised by its own runtime")
        return self

    def to_parameters(self) -> dict[str, str]:
        return {k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_parameters(cls, params: dict[str, Any]) -> ModelSettings:
        """From the model config's ``parameters`` (``{"key": {"string_value": "..."}}`` or ``{"key": "..."}``)."""
        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in params.items():
            if key in known:
                text = value.get("string_value", "") if isinstance(value, dict) else value
                values[key] = json.loads(text)
        return cls(**values)


def _pbtxt_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _dims(shape: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def model_config(settings: ModelSettings) -> str:
    """The ``config.pbtxt`` text for ``settings``."""
    batched = settings.batch_requests > 0
    lines = [f'name: "{MODEL_NAME}"', 'backend: "python"', f"max_batch_size: {settings.batch_requests}", "input ["]
    items = []
    for name, (dtype, shape, optional) in INPUTS.items():
        opt = " optional: true" if optional else ""
        if batched and -1 in shape:  # scenes of different sizes queue together; model.py splits them
            opt += " allow_ragged_batch: true"
        items.append(f'  {{ name: "{name}" data_type: TYPE_{dtype} dims: {_dims(shape)}{opt} }}')
    lines += [",\n".join(items), "]", "output ["]
    lines.append(",\n".join(f'  {{ name: "{n}" data_type: TYPE_{d} dims: {_dims(s)} }}'
                            for n, (d, s) in OUTPUTS.items()))
    lines.append("]")
    if settings.device == "cpu":
        lines.append(f"instance_group [ {{ count: {settings.instances} kind: KIND_CPU }} ]")
    else:
        gpus = f" gpus: {_dims(tuple(settings.gpus))}" if settings.gpus else ""
        lines.append(f"instance_group [ {{ count: {settings.instances} kind: KIND_GPU{gpus} }} ]")
    if batched or settings.max_queue_delay_us or settings.queue_timeout_us or settings.max_queue_size:
        queue = []
        if settings.queue_timeout_us:
            queue.append(f"timeout_action: REJECT default_timeout_microseconds: {settings.queue_timeout_us} "
                         "allow_timeout_override: true")
        if settings.max_queue_size:
            queue.append(f"max_queue_size: {settings.max_queue_size}")
        policy = f" default_queue_policy {{ {' '.join(queue)} }}" if queue else ""
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {settings.max_queue_delay_us}{policy} }}")
    for key, value in settings.to_parameters().items():
        lines.append(f"parameters: {{ key: {_pbtxt_string(key)} value: {{ string_value: {_pbtxt_string(value)} }} }}")
    return "\n".join(lines) + "\n"


def write_repository(root: str | Path, settings: ModelSettings) -> Path:
    """Write the model repository under ``root`` (created; an old ``sschsr`` model there is replaced); returns the
    model's folder."""
    settings.check()
    model_dir = Path(root) / MODEL_NAME
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(model_config(settings), encoding="utf-8")
    shutil.copyfile(_MODEL_TEMPLATE, model_dir / "1" / "model.py")
    return model_dir
