"""fer-serve under load on localhost: N clients posting photos for T seconds; errors, p50/p95 latency, and the
server's resident memory at the start and the end (memory stays flat).

\b
    python -m benchmarks.scripts.serve_load --out-dir benchmarks/results/serve --clients 4 --seconds 30

The server is a real fer-serve started as its own process on a free port (``running_server``, which the HTTP tests
use too), with ``--workers 2 --queue 2``: each client keeps one request in flight, so four clients fill every admitted
slot and none should see 503. The photo is the bundled face on a 1280x960 JPEG canvas (3.7 MB decoded), so a
request's image left behind would show in the memory. Writes results.json and report.md.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click
import cv2
import numpy as np

from fer_runtime.cli import DEMO_IMAGE
from fer_runtime.outputs import atomic_write_text, check_output_dir
from fer_runtime.profiling import percentiles

ROOT = Path(__file__).resolve().parents[2]
SERVER_ARGS = ["--workers", "2", "--queue", "2"]


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
    env.pop("ORT_DISABLE_TELEMETRY", None)  # fer-serve sets it itself (import fer_runtime)
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "fer_runtime.serve.cli", "--port", "0", *args], cwd=folder, env=env,
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


def load_photos() -> list[bytes]:
    """JPEG bytes of the bundled face, enlarged to 480x480, on a 1280x960 canvas, and of its mirror image."""
    face = cv2.resize(cv2.imread(str(DEMO_IMAGE)), (480, 480))
    canvas = np.full((960, 1280, 3), 90, np.uint8)
    canvas[240:720, 400:880] = face
    return [cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            for img in (canvas, np.ascontiguousarray(canvas[:, ::-1]))]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: str, seconds: float | None = None, message: str | None = None) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if seconds is not None:
                self.latencies.append(seconds)
            if message and len(self.errors) < 10:
                self.errors.append(message)


def _client(server: Server, photos: list[bytes], expected: list, until: float, tally: Tally, first: int) -> None:
    """One client on one keep-alive connection, one request in flight, until the deadline; an answer other than the
    photo's records made alone is an error."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    i = first
    while time.monotonic() < until:
        t0 = time.perf_counter()
        try:
            k = i % len(photos)
            conn.request("POST", "/analyze", body=photos[k], headers={"Content-Type": "image/jpeg"})
            answer = conn.getresponse()
            body = answer.read()
            ok = answer.status == 200 and json.loads(body) == expected[k]
            status = str(answer.status) if ok or answer.status != 200 else "200 with other records"
            tally.add(status, time.perf_counter() - t0, None if ok else f"{answer.status}: {body[:200]!r}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            tally.add("exception", message=f"{type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        i += 1
    conn.close()


def run_load(server: Server, clients: int, seconds: float) -> dict:
    """``clients`` clients for ``seconds``, after warm-up requests one at a time (whose answers the clients' must
    equal); the server's RSS before and after."""
    photos = load_photos()
    expected = [server.request("POST", "/analyze", photo)[2] for photo in photos]
    assert all(len(e) == 1 for e in expected), expected
    for i in range(clients):  # every worker thread has made its detector
        assert server.request("POST", "/analyze", photos[i % 2])[0] == 200
    rss_start = server.rss_mb()
    tally, until = Tally(), time.monotonic() + seconds
    threads = [threading.Thread(target=_client, args=(server, photos, expected, until, tally, i)) for i in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    ok = tally.statuses.get("200", 0)
    return {"clients": clients, "seconds": seconds, "requests": sum(tally.statuses.values()), "ok": ok,
            "errors": sum(tally.statuses.values()) - ok, "statuses": tally.statuses, "error_samples": tally.errors,
            "requests_per_s": ok / wall, "latency": percentiles(tally.latencies), "rss_start_mb": rss_start,
            "rss_end_mb": server.rss_mb()}


def markdown(r: dict) -> str:
    lat = r["latency"]
    return "\n".join([
        "# fer-serve under load on localhost", "",
        f"`{r['command']}`, {r['date']}, {r['cpu']} ({r['cores']} cores), load average {r['load_before']:.2f} before. "
        f"fer-serve {' '.join(r['server_args'])}; {r['clients']} clients for {r['seconds']:.0f} s, each with one "
        "request in flight, posting a 1280x960 JPEG with one face.", "",
        "| requests | errors | requests/s | p50 ms | p95 ms | RSS start MB | RSS end MB |",
        "|---|---|---|---|---|---|---|",
        f"| {r['requests']} | {r['errors']} | {r['requests_per_s']:.1f} | {lat['p50_ms']:.1f} | {lat['p95_ms']:.1f} | "
        f"{r['rss_start_mb']:.1f} | {r['rss_end_mb']:.1f} |", ""])


@click.command()
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="folder for results.json and report.md")
@click.option("--clients", default=4, show_default=True, type=click.IntRange(1, 64), help="clients at once")
@click.option("--seconds", default=30.0, show_default=True, type=click.FloatRange(1, 3600), help="how long they post")
def main(out_dir: str, clients: int, seconds: float) -> None:
    import platform
    import tempfile

    out = check_output_dir(out_dir)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "serve"
        folder.mkdir()
        with running_server(SERVER_ARGS, folder) as server:
            results = run_load(server, clients, seconds)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    results.update(command=f"python -m benchmarks.scripts.serve_load --out-dir {out_dir} --clients {clients} "
                           f"--seconds {seconds:g}", date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cpu=cpu,
                   cores=os.cpu_count(), load_before=load_before, server_args=SERVER_ARGS)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "report.md", markdown(results))
    click.echo(markdown(results))


if __name__ == "__main__":
    main()
