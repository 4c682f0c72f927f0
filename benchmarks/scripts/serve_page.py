"""fer-serve's webcam page in a real browser: headless Chromium with a fake camera that plays a video file of a face,
driven through chromedriver's W3C WebDriver protocol (plain HTTP and JSON: the standard library is the client).

\b
    python -m benchmarks.scripts.serve_page --screenshot benchmarks/results/serve/page.png

Starts fer-serve on a free localhost port, writes a Y4M clip of the bundled face on a 640x480 canvas, opens the page,
waits until it lists a face, prints what the page shows and saves a screenshot of it. tests/test_serve_browser.py runs
the same and checks the labels and boxes.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import cv2
import numpy as np

from benchmarks.scripts.serve_load import running_server
from fer_runtime.cli import DEMO_IMAGE

CLIP_SIZE = (640, 480)
FACE_AT = (200, 80)  # where the bundled 320x320 face sits on the clip's canvas (x, y)
# what the page shows, read from its DOM: the listed faces, the overlay's drawn pixels, the status line
READ_PAGE = """
const faces = [...document.querySelectorAll('#faces li')].map(li => ({label: li.dataset.label,
    confidence: Number(li.dataset.confidence), box: li.dataset.box.split(',').map(Number), text: li.textContent}));
const overlay = document.getElementById('overlay');
let drawn = 0;
if (overlay.width && overlay.height) {
  const pixels = overlay.getContext('2d').getImageData(0, 0, overlay.width, overlay.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i]) drawn++;
}
const video = document.getElementById('video');
return {faces, drawn, status: document.getElementById('status').textContent, model: document.getElementById('model').textContent,
        video: [video.videoWidth, video.videoHeight]};
"""


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) where both are installed (Debian: apt-get install chromium chromium-driver)."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def clip_frame() -> np.ndarray:
    """The clip's one picture: the bundled face on a gray 640x480 canvas."""
    canvas = np.full((CLIP_SIZE[1], CLIP_SIZE[0], 3), 90, np.uint8)
    face = cv2.imread(str(DEMO_IMAGE))
    x, y = FACE_AT
    canvas[y : y + face.shape[0], x : x + face.shape[1]] = face
    return canvas


def write_y4m(path: Path, frame: np.ndarray, frames: int = 30, fps: int = 15) -> Path:
    """A Y4M (YUV 4:2:0) video of ``frames`` copies of ``frame``: what Chromium's fake camera plays, in a loop."""
    height, width = frame.shape[:2]
    planes = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes()
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            out.write(b"FRAME\n" + planes)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, method: str, path: str, payload: dict | None = None, timeout: float = 60) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())["value"]
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"WebDriver {method} {path}: {exc.read()[:500]!r}") from None


@contextmanager
def browser_session(clip: Path, profile: Path, size: tuple[int, int] = (760, 820)) -> Iterator[tuple[str, str]]:
    """(WebDriver base URL, session id) of headless Chromium whose camera plays ``clip``; closed on exit."""
    paths = browser_paths()
    if paths is None:
        raise RuntimeError("Chromium and chromedriver are not installed")
    browser, driver = paths
    port = _free_port()
    process = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if _call(base, "GET", "/status", timeout=2).get("ready"):
                    break
            except (OSError, RuntimeError):
                time.sleep(0.1)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={clip}", f"--window-size={size[0]},{size[1]}",
                f"--user-data-dir={profile}"]
        capabilities = {"browserName": "chrome", "goog:chromeOptions": {"binary": browser, "args": args}}
        session = _call(base, "POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})["sessionId"]
        try:
            yield base, session
        finally:
            _call(base, "DELETE", f"/session/{session}")
    finally:
        process.terminate()
        process.wait(20)


def page_with_faces(base: str, session: str, url: str, timeout: float = 90) -> dict:
    """Open the page and read it until it lists a face (or the time is up): what ``READ_PAGE`` returns."""
    _call(base, "POST", f"/session/{session}/url", {"url": url})
    deadline, shown = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        shown = _call(base, "POST", f"/session/{session}/execute/sync", {"script": READ_PAGE, "args": []})
        if shown["faces"] and shown["drawn"]:
            break
        time.sleep(0.5)
    return shown


def screenshot(base: str, session: str, path: Path) -> Path:
    path.write_bytes(base64.b64decode(_call(base, "GET", f"/session/{session}/screenshot")))
    return path


@click.command()
@click.option("--screenshot", "out", required=True, type=click.Path(dir_okay=False), help="PNG of the page")
def main(out: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "serve"
        folder.mkdir()
        clip = write_y4m(Path(tmp) / "clip.y4m", clip_frame())
        with running_server([], folder) as server, browser_session(clip, Path(tmp) / "profile") as (base, session):
            shown = page_with_faces(base, session, f"http://{server.host}:{server.port}/")
            time.sleep(1.0)  # a few more frames, so that the picture is a steady one
            screenshot(base, session, Path(out))
    click.echo(json.dumps(shown, indent=2))
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
