"""A thin numpy client of the served ``sschsr`` model over ``tritonclient`` (HTTP or gRPC).

>>> from sschsr_deploy.serving import Client
>>> with Client("127.0.0.1:8000") as client:                  # or Client("127.0.0.1:8001", protocol="grpc")
...     hr, meta = client.infer(lr, ref)                      # lr: h x w x C float32, ref: H x W x 3 uint8

A request the server refuses raises :class:`~sschsr_deploy.errors.InputValidationError` (HTTP 400 / gRPC
INVALID_ARGUMENT: the server's one-line message) or :class:`ServingError` (anything else: server down, timeout,
internal error). One client is one connection: use one client per thread.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from sschsr_deploy.errors import InputValidationError, SSCHSRError
from sschsr_deploy.serving.repository import MODEL_NAME

__all__ = ["Client", "ServingError"]


class ServingError(SSCHSRError, RuntimeError):
    """The server could not be reached, timed out or failed on a request (not the request's fault)."""


_INVALID = ("400", "StatusCode.INVALID_ARGUMENT", "INVALID_ARGUMENT")


class Client:
    """Client of the ``sschsr`` model.

    Args:
        url: ``host:port`` of the server's HTTP (default 8000) or gRPC (default 8001) endpoint.
        protocol: ``"http"`` or ``"grpc"``.
        timeout: seconds a request may take (network and inference) before :class:`ServingError`.
        model: the model name (``sschsr``).
    """

    def __init__(self, url: str, protocol: str = "http", *, timeout: float = 300.0, model: str = MODEL_NAME) -> None:
        protocol = protocol.lower()
        if protocol not in ("http", "grpc"):
            raise InputValidationError(f"protocol must be 'http' or 'grpc'; got {protocol!r}")
        try:
            if protocol == "http":
                import tritonclient.http as tc
            else:
                import tritonclient.grpc as tc
        except ImportError as exc:
            raise ServingError(f"the serving client needs tritonclient[{protocol}] (pip install "
                               f"'tritonclient[{protocol}]'): {exc}") from exc
        self._tc = tc
        self.url, self.protocol, self.timeout, self.model = url, protocol, float(timeout), model
        if protocol == "http":
            self._client = tc.InferenceServerClient(url, connection_timeout=self.timeout, network_timeout=self.timeout)
        else:
            self._client = tc.InferenceServerClient(url)

    # ------------------------------------------------------------------ health
    def live(self) -> bool:
        try:
            return bool(self._client.is_server_live())
        except Exception:
            return False

    def ready(self) -> bool:
        """The server and the model are ready to serve."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except Exception:
            return False

    # ------------------------------------------------------------------ inference
    def _input(self, name: str, array: np.ndarray, datatype: str) -> Any:
        tensor = self._tc.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return tensor

    def infer(self, lr: Any, ref: Any, scale: int | None = None,
              nodata: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Super-resolve ``lr`` (h x w x C, converted to float32) with ``ref`` (H x W x 3 uint8); returns the HR cube
        (H x W x C float32) and the run's metadata (model, backend, tiling, timings)."""
        lr = np.ascontiguousarray(lr, dtype=np.float32)
        ref = np.asarray(ref)
        if ref.dtype != np.uint8:
            raise InputValidationError(f"the reference must be uint8 (H x W x 3); got {ref.dtype}")
        inputs = [self._input("LR_HSI", lr, "FP32"), self._input("REF_RGB", np.ascontiguousarray(ref), "UINT8")]
        if scale is not None:
            inputs.append(self._input("SCALE", np.array([scale], dtype=np.int32), "INT32"))
        if nodata is not None:
            inputs.append(self._input("NODATA", np.array([nodata], dtype=np.float32), "FP32"))
        outputs = [self._tc.InferRequestedOutput("HR_HSI"), self._tc.InferRequestedOutput("METADATA")]
        try:
            if self.protocol == "grpc":
                result = self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout)
            else:
                result = self._client.infer(self.model, inputs, outputs=outputs)
        except self._tc.InferenceServerException as exc:
            raise self._error(exc) from None
        except (OSError, TimeoutError) as exc:
            raise ServingError(f"{self.protocol}://{self.url}: {type(exc).__name__}: {exc}") from exc
        hr = result.as_numpy("HR_HSI")
        meta = json.loads(bytes(result.as_numpy("METADATA")).decode("utf-8"))
        return hr, meta

    def _error(self, exc: Any) -> SSCHSRError:
        message = " ".join(str(exc.message() or exc).split())
        status = str(exc.status() or "")
        if status in _INVALID:
            return InputValidationError(message)
        return ServingError(f"{status + ': ' if status else ''}{message}")

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Close the connection (a server waits for open HTTP connections when it shuts down)."""
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
