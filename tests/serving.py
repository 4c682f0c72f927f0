"""A real fer-serve for the tests and the load benchmark: started as its own process on a free localhost port, spoken
to over HTTP with the standard library's client."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    process: subprocess.Popen
    host: str
    port: int
    log: Path

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60) -> tuple[int, dict, object]:
        """(status, headers, JSON body or text) of one request on a new connection."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            data = answer.read()
            kind = answer.getheader("content-type", "")
            return answer.status, dict(answer.getheaders()), json.loads(data) if "json" in kind else data.decode()
        finally:
            conn.close()

    def rss_mb(self) -> float:
        """The server process's resident memory (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


@contextmanager
def running_server(args: list[str], folder: Path, timeout: float = 120) -> Iterator[Server]:
    """``fer-serve --port 0 ARGS`` with ``folder`` as its working folder, temporary folder and home; stopped on exit."""
    log = folder.parent / f"{folder.name}.log"
    env = {**os.environ, "TMPDIR": str(folder), "HOME": str(folder), "PYTHONPATH": str(ROOT)}
    env.pop("ORT_DISABLE_TELEMETRY", None)  # fer-serve sets it itself
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "fer_serve.cli", "--port", "0", *args], cwd=folder, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        server = _wait_for_address(process, log, timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_address(process: subprocess.Popen, log: Path, timeout: float) -> Server:
    """The server once its start line names its address and /health answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fer-serve exited {process.returncode}: {log.read_text()}")
        for line in log.read_text().splitlines():
            if line.startswith("fer-serve: http://"):
                address = line.split("http://", 1)[1].split("/", 1)[0]
                host, port = address.rsplit(":", 1)
                server = Server(process, host.strip("[]"), int(port), log)
                try:
                    if server.request("GET", "/health", timeout=5)[0] == 200:
                        return server
                except OSError:
                    pass
        time.sleep(0.2)
    raise RuntimeError(f"fer-serve did not start in {timeout} s: {log.read_text()}")
