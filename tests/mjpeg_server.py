"""An MJPEG stream served over HTTP from localhost that drops for a while and comes back (issue 48).

The stream is up for ``up`` seconds (the astronaut's face on the left), answers 503 for ``outage`` seconds, is up
again for ``up`` seconds (the face on the right), then answers 404 for good. ``python -m tests.mjpeg_server
--outage 5`` runs fer-run on it and prints what fer-run says.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = b"frame"


def face_frames(size_after: tuple[int, int] = (640, 480)) -> tuple[bytes, bytes]:
    """Two JPEG frames, 640x480: the face on the left (before the outage) and on the right (after it, in a frame of
    ``size_after``)."""
    from skimage import data

    face = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[30:230, 130:330], (160, 160))
    frames = []
    for x in (60, 420):
        canvas = np.full((480, 640, 3), 90, np.uint8)
        canvas[150:310, x : x + 160] = face
        frames.append(canvas)
    frames[1] = cv2.resize(frames[1], size_after)
    return tuple(cv2.imencode(".jpg", f)[1].tobytes() for f in frames)


class DroppingStream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, up: float, outage: float, fps: float = 25.0, stall: bool = False,
                 size_after: tuple[int, int] = (640, 480)) -> None:
        """``stall``: the outage keeps the connection open and sends nothing, instead of closing it."""
        super().__init__(("127.0.0.1", 0), _Handler)
        self.up, self.outage, self.fps, self.stall = up, outage, fps, stall
        self.frames = face_frames(size_after)
        self.start = time.monotonic()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/stream.mjpg"

    def phase(self) -> tuple[int | None, float]:
        """(which frame is served now, or None while down; when this phase ends)."""
        t = time.monotonic() - self.start
        ends = (self.up, self.up + self.outage, 2 * self.up + self.outage)
        if t < ends[0]:
            return 0, self.start + ends[0]
        if t < ends[2] and t >= ends[1]:
            return 1, self.start + ends[2]
        return None, self.start + (ends[1] if t < ends[1] else 1e12)


class _Handler(BaseHTTPRequestHandler):
    server: DroppingStream

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        which, until = self.server.phase()
        if which is None:
            self.send_error(503 if until < 1e12 else 404)
            return
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
        self.end_headers()
        jpeg = self.server.frames[which]
        try:
            while time.monotonic() < until:
                self.wfile.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                time.sleep(1 / self.server.fps)
            if self.server.stall and which == 0:
                time.sleep(self.server.outage)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def run_fer_run(server: DroppingStream, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer_runtime.cli", "--source", server.url, "--no-display", *args],
                          capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--up", type=float, default=4.0)
    parser.add_argument("--outage", type=float, default=5.0)
    parser.add_argument("--reconnect", type=float, default=10.0)
    a = parser.parse_args()
    result = run_fer_run(DroppingStream(a.up, a.outage), "--reconnect", str(a.reconnect))
    print(f"$ fer-run --source URL --no-display --reconnect {a.reconnect}  (stream up {a.up} s, down {a.outage} s, "
          f"up {a.up} s, then gone); exit code {result.returncode}")
    print(result.stdout + result.stderr)
