"""A thin numpy client of the served ``sschsr`` model over ``tritonclient`` (HTTP or gRPC).

>>> from sschsr_deploy.serving import Client
>>> with Client("127.0.0.1:8000") as client:                  # or Client("127.0.0.1:8001", protocol="grpc")
...     hr, meta = client.infer(lr, ref)                      # lr: h x w x C float32, ref: H x W x 3 uint8

The client reads the model's config once: for a server started with ``--batch-requests`` (the batched interface,
see :mod:`sschsr_deploy.serving.repository`) it adds and removes the leading batch dimension, so ``infer`` is the same
call for both.

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
        batched: whether the server runs the batched interface (``serve --batch-requests``); ``None`` (default): read
            from the model's config at the first request.
    """

    def __init__(self, url: str, protocol: str = "http", *, timeout: float = 300.0, model: str = MODEL_NAME,
                 batched: bool | None = None) -> None:
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
        self._batched = batched
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
    @property
    def batched(self) -> bool:
        """The server takes a batch dimension (its model config's ``max_batch_size`` > 0); asked once."""
        if self._batched is None:
            try:
                if self.protocol == "grpc":
                    config = self._client.get_model_config(self.model, as_json=True).get("config", {})
                else:
                    config = self._client.get_model_config(self.model)
            except self._tc.InferenceServerException as exc:
                raise self._error(exc) from None
            except (OSError, TimeoutError) as exc:
                raise ServingError(f"{self.protocol}://{self.url}: {type(exc).__name__}: {exc}") from exc
            self._batched = int(config.get("max_batch_size", 0) or 0) > 0
        return self._batched

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
        ref = np.ascontiguousarray(ref)
        batched = self.batched
        scale_arr = None if scale is None else np.array([scale], dtype=np.int32)
        nodata_arr = None if nodata is None else np.array([nodata], dtype=np.float32)
        if batched:  # one scene: a batch of one
            lr, ref = lr[None], ref[None]
            scale_arr = None if scale_arr is None else scale_arr[None]
            nodata_arr = None if nodata_arr is None else nodata_arr[None]
        inputs = [self._input("LR_HSI", lr, "FP32"), self._input("REF_RGB", ref, "UINT8")]
        if scale_arr is not None:
            inputs.append(self._input("SCALE", scale_arr, "INT32"))
        if nodata_arr is not None:
            inputs.append(self._input("NODATA", nodata_arr, "FP32"))
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
        meta_bytes = result.as_numpy("METADATA")
        if batched:
            hr, meta_bytes = hr[0], meta_bytes[0]
        meta = json.loads(bytes(meta_bytes).decode("utf-8"))
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
