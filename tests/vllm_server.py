"""Start and stop a vLLM OpenAI-compatible server as a child process: a harness for the tests and bench/lmm.py.

vLLM often lives in a virtual environment of its own (its builds pin torch); `VLLMServer` runs
``python -m vllm.entrypoints.openai.api_server`` with the interpreter you name, waits until
``/health`` answers, and stops the whole process group on exit. The server's output goes to a log
file whose tail is quoted when start-up fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

#: Flags known to work with vLLM's CPU build on tiny models (see the project's OFFLINE notes).
CPU_ARGS = ("--max-model-len", "1024", "--max-num-batched-tokens", "8192", "--dtype", "bfloat16", "--enforce-eager")
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


class VLLMServerError(RuntimeError):
    """The vLLM server did not start or stopped unexpectedly."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_vllm_python() -> Path | None:
    """``$G3_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` of this checkout (made by scripts/vllm_cpu_venv.sh)."""
    env = os.environ.get("G3_VLLM_PYTHON")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
    return candidate if candidate.exists() else None


class VLLMServer:
    """A vLLM server for ``model`` on ``host:port``; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        model: str | Path,
        *,
        python: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        args: tuple[str, ...] = CPU_ARGS,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 300.0,
        log_path: str | Path | None = None,
    ) -> None:
        self.model = str(model)
        self.python = Path(python) if python else default_vllm_python()
        self.host = host
        self.port = port or free_port(host)
        self.args = args
        self.env = {**CPU_ENV, **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible root, ``http://host:port/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> VLLMServer:
        """Launch the server and block until ``/health`` answers 200 (or raise `VLLMServerError`)."""
        if self.python is None or not self.python.exists():
            raise VLLMServerError(
                "no Python with vLLM found: build one with `bash scripts/vllm_cpu_venv.sh` or set G3_VLLM_PYTHON"
            )
        cmd = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--host", self.host, "--port", str(self.port), *self.args]  # fmt: skip
        log.info("starting vLLM: %s (log: %s)", " ".join(cmd), self.log_path)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise VLLMServerError(f"vLLM exited with status {self.process.returncode}:\n{self.log_tail()}")
            if self.healthy():
                log.info("vLLM is up at %s", self.base_url)
                return self
            time.sleep(1.0)
        self.stop()
        raise VLLMServerError(f"vLLM did not answer /health within {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """Whether ``/health`` answers 200 now."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=timeout_s) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 30.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout_s``)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
