"""Start and stop NVIDIA Triton Inference Server serving the ``sschsr`` model.

The ``tritonserver`` binary and its Python backend come from the ``nvidia-pytriton`` wheel; PyTriton's own Python
proxy is not used (under numpy 2 its stub model returns empty outputs), the server runs our model repository
(:mod:`sschsr_deploy.serving.repository`) instead. What the launch needs, found here once per process:

- a backend directory ``<work>/backends/python/`` holding links to the wheel's ``libtriton_python.so`` and
  ``triton_python_backend_utils.py`` and the stub ``triton_python_backend_stub`` built for this interpreter's
  Python version (``pytriton/tritonserver/python_backend_stubs/3.X/``);
- ``LD_LIBRARY_PATH``: this interpreter's own ``libpython`` folder first (the stub links ``libpython3.X.so``; the
  system's copy of another build breaks model loading), then the wheel's ``nvidia_pytriton.libs``;
- ``PATH`` with this interpreter's folder first (the stub's embedded Python finds its prefix, hence its
  site-packages, through it) and ``sys_path`` in the model parameters (where ``sschsr_deploy`` is imported from).

:class:`Server` is a context manager: free ports (or the given ones), start, wait until the model is ready, and on
exit SIGTERM (Triton finishes in-flight requests for up to ``exit_timeout`` s), then SIGKILL of its process group after
the grace period. :func:`serve` runs one in the foreground until SIGINT / SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sschsr_deploy.errors import SSCHSRError
from sschsr_deploy.serving.repository import MODEL_NAME, ModelSettings, write_repository

__all__ = ["Server", "ServingUnavailableError", "TritonInstall", "find_triton", "free_port", "serve"]


class ServingUnavailableError(SSCHSRError, RuntimeError):
    """Triton Inference Server cannot be started here: the binary is missing, or it exited / never became ready."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's server pieces are."""

    binary: Path
    python_backend: Path  # folder with libtriton_python.so and triton_python_backend_utils.py
    stub: Path
    libs: Path | None  # nvidia_pytriton.libs (bundled shared libraries)


def find_triton() -> TritonInstall:
    """The ``tritonserver`` binary, Python backend and stub of the installed ``nvidia-pytriton`` wheel; raises
    :class:`ServingUnavailableError` saying what is missing."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ServingUnavailableError(
            "serving needs the tritonserver binary shipped in nvidia-pytriton: pip install --no-deps "
            "nvidia-pytriton==0.7.0 (Linux x86_64 / aarch64)")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=next((p for p in (root.parents[1] / "nvidia_pytriton.libs", root / "external_libs") if p.is_dir()), None),
    )
    for what, path in (("the tritonserver binary", install.binary),
                       ("the Python backend", install.python_backend / "libtriton_python.so"),
                       (f"the Python {version} backend stub", install.stub)):
        if not path.exists():
            raise ServingUnavailableError(f"{what} is missing from the nvidia-pytriton install ({path})")
    return install


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS's choice)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _link(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def build_backend_dir(install: TritonInstall, folder: Path) -> Path:
    """``folder/python/`` with the backend library, its utils and this Python's stub; returns ``folder``."""
    python = folder / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in (install.python_backend / "libtriton_python.so",
                install.python_backend / "triton_python_backend_utils.py", install.stub):
        dst = python / src.name
        if not dst.exists():
            _link(src, dst)
    return folder


def server_environment(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server process's environment (see the module docstring)."""
    env = dict(os.environ if base is None else base)
    libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(install.libs or "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs if d] + [d for d in [env.get("LD_LIBRARY_PATH")] if d])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


class Server:
    """Triton Inference Server with the ``sschsr`` model, as a child process.

    Args:
        source: what to serve (see :class:`~sschsr_deploy.serving.repository.ModelSettings`); or pass ``settings``.
        host: address the HTTP, gRPC and metrics endpoints listen on.
        http_port, grpc_port, metrics_port: ``0`` for a free port each (the chosen ones: :attr:`http_port`...).
        settings: a ready :class:`ModelSettings` (``source`` and ``model_options`` are then ignored).
        startup_timeout: seconds to wait for the model to be ready.
        exit_timeout: seconds Triton waits for in-flight requests after SIGTERM; SIGKILL follows after
            ``exit_timeout + grace`` s.
        workdir: where the model repository, backend links and server log go (default: a temp folder, removed on
            :meth:`stop`).
        log_verbose: Triton's ``--log-verbose`` level.
        extra_args: more ``tritonserver`` flags.
        model_options: :class:`ModelSettings` fields (``instances``, ``max_megapixels``, ``device``, ``tile``...).
    """

    def __init__(self, source: str | os.PathLike = "tiny-x4", *, host: str = "127.0.0.1", http_port: int = 0,
                 grpc_port: int = 0, metrics_port: int = 0, settings: ModelSettings | None = None,
                 startup_timeout: float = 120.0, exit_timeout: int = 30, grace: float = 10.0,
                 workdir: str | os.PathLike | None = None, log_verbose: int = 0, extra_args: list[str] | None = None,
                 **model_options: Any) -> None:
        self.settings = settings if settings is not None else ModelSettings(source=os.fspath(source), **model_options)
        if not self.settings.sys_path:
            self.settings.sys_path = [str(Path(__file__).resolve().parents[2])]
        self.settings.check()
        self.host = host
        self._ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.startup_timeout = startup_timeout
        self.exit_timeout = int(exit_timeout)
        self.grace = grace
        self._workdir_arg = workdir
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self._own_workdir = False
        self._log_file: Any = None
        self.returncode: int | None = None

    # ------------------------------------------------------------------ addresses
    @property
    def http_port(self) -> int:
        return self._ports["http"]

    @property
    def grpc_port(self) -> int:
        return self._ports["grpc"]

    @property
    def metrics_port(self) -> int:
        return self._ports["metrics"]

    def _client_host(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host
        return f"[{host}]" if ":" in host else host

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (what ``tritonclient.http`` and :class:`Client` take)."""
        return f"{self._client_host()}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host()}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host()}:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path | None:
        return None if self.workdir is None else self.workdir / "tritonserver.log"

    def log_text(self, tail: int = 4000) -> str:
        """The last ``tail`` characters of the server's log (stdout and stderr)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-tail:]

    def log_errors(self, count: int = 4) -> str:
        """The server log's last ``count`` error lines (``E...``; the CUDA driver note of a CPU machine left out),
        else its tail."""
        text = self.log_text(200_000)
        lines = [ln for ln in text.splitlines() if re.match(r"E\d{4} ", ln) and "CudaDriverHelper" not in ln]
        return "\n".join(lines[-count:]) if lines else text[-4000:]

    # ------------------------------------------------------------------ life cycle
    def command(self, install: TritonInstall) -> list[str]:
        assert self.workdir is not None
        return [str(install.binary), "--model-repository", str(self.workdir / "models"),
                "--backend-directory", str(self.workdir / "backends"),
                "--model-control-mode", "none", "--strict-readiness", "true", "--exit-on-error", "true",
                "--http-address", self.host, "--http-port", str(self.http_port),
                "--grpc-address", self.host, "--grpc-port", str(self.grpc_port),
                "--allow-metrics", "true", "--allow-gpu-metrics", str(self.settings.device != "cpu").lower(),
                "--metrics-address", self.host, "--metrics-port", str(self.metrics_port),
                "--exit-timeout-secs", str(self.exit_timeout), "--log-verbose", str(self.log_verbose),
                *self.extra_args]

    def start(self) -> Server:
        """Start the server and wait until the model is ready (:class:`ServingUnavailableError` with the log's tail
        when it exits or is not ready within ``startup_timeout``)."""
        if self.process is not None:
            raise ServingUnavailableError("the server is already running")
        install = find_triton()
        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="sschsr-serve-"))
            self._own_workdir = True
        else:
            self.workdir = Path(self._workdir_arg)
            self.workdir.mkdir(parents=True, exist_ok=True)
        taken: set[int] = set()
        for name, port in self._ports.items():
            if not port:
                while port in taken or not port:
                    port = free_port(self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1")
                self._ports[name] = port
            taken.add(self._ports[name])
        write_repository(self.workdir / "models", self.settings)
        build_backend_dir(install, self.workdir / "backends")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(self.command(install), stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=server_environment(install),
                                        start_new_session=True)
        try:
            self.wait_ready(self.startup_timeout)
        except ServingUnavailableError:
            self._own_workdir = False  # kept: the error names its log
            self.stop()
            raise
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    def ready(self) -> bool:
        """Server ready and the ``sschsr`` model ready (HTTP ``/v2/health/ready``, ``/v2/models/sschsr/ready``)."""
        return (self.running and self._get("/v2/health/ready") == 200
                and self._get(f"/v2/models/{MODEL_NAME}/ready") == 200)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServingUnavailableError(
                    f"tritonserver exited with status {self.process.returncode} while starting (log: {self.log_path}): "
                    f"{self.log_errors()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise ServingUnavailableError(f"tritonserver was not ready within {timeout:g} s (log: {self.log_path}): "
                                      f"{self.log_errors()}")

    def stop(self) -> int | None:
        """SIGTERM, wait ``exit_timeout + grace`` s, then SIGKILL of the server's process group; returns its exit
        status. Removes a temp work folder. Safe to call twice."""
        proc = self.process
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.exit_timeout + self.grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            # the Python backend's stub processes end with the server; a stub left behind by a SIGKILL is ended here
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            self.returncode = proc.returncode
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_workdir and self.workdir is not None:
            self.last_log = self.log_text(20000)
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self._own_workdir = False
        return self.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def describe(self) -> dict[str, Any]:
        return {"http": self.http_url, "grpc": self.grpc_url, "metrics": self.metrics_url, "model": MODEL_NAME,
                "pid": None if self.process is None else self.process.pid, "settings": vars(self.settings)}


def serve(source: str | os.PathLike = "tiny-x4", *, ready_callback: Any = None,
          stop_event: threading.Event | None = None, **server_options: Any) -> int:
    """Run the server in the foreground until SIGINT / SIGTERM (or ``stop_event``), then stop it gracefully;
    returns 0 after a requested stop, 1 when the server died on its own. ``ready_callback(server)`` is called once
    it is ready (the command line prints the endpoints there). ``server_options``: :class:`Server`'s."""
    stop = stop_event or threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    server = Server(source, **server_options)
    try:
        server.start()
        if ready_callback is not None:
            ready_callback(server)
        while not stop.wait(0.5):
            if not server.running:
                print(f"tritonserver exited on its own; its log ends:\n{server.log_text()}", file=sys.stderr)
                return 1
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
