"""fer-run's window for real, under Xvfb (Debian's xvfb and x11-apps packages); skipped where they are absent.

The screenshot is kept as a test artifact in ``test-artifacts/`` (not in git).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_runtime.contract import ModelContract
from fer_runtime.pipeline import BOX_COLOUR

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("xwd")),
                                reason="needs Xvfb and xwd (apt-get install xvfb x11-apps)")  # fmt: skip


def _free_display() -> int:
    for n in range(90, 140):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    pytest.skip("no free X display number")


def test_the_window_shows_boxes_labels_confidence_and_fps(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("onnx")
    from benchmarks.make_video import write_moving_face_video

    from .onnx_models import tiny_classifier
    from .xwd import read_xwd

    model = tiny_classifier(tmp_path / "m.onnx", ModelContract(classes=("angry", "happy", "sad")))
    video = write_moving_face_video(tmp_path / "v.mp4", frames=900, fps=30)
    display = _free_display()
    server = subprocess.Popen(["Xvfb", f":{display}", "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env = {**os.environ, "DISPLAY": f":{display}", "QT_QPA_PLATFORM": "xcb"}
    run = None
    try:
        socket, ready = Path(f"/tmp/.X11-unix/X{display}"), time.time() + 15
        while not socket.exists() and time.time() < ready:
            time.sleep(0.1)
        run = subprocess.Popen([sys.executable, "-c", "from fer_runtime.cli import main; main()", "--source", str(video),
                                "--model", str(model), "--display"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
        shot, deadline = None, time.time() + 40
        while time.time() < deadline and run.poll() is None:
            time.sleep(0.5)
            dump = tmp_path / "screen.xwd"
            with open(dump, "wb") as fh:
                subprocess.run(["xwd", "-root", "-silent"], env=env, stdout=fh, timeout=10)
            image = read_xwd(dump)
            box = np.all(image == np.asarray(BOX_COLOUR, np.uint8), axis=2)
            if box.sum() > 200:  # the overlay's box, label tab and confidence bar are on screen
                shot = image
                break
        if shot is None:
            run.terminate()
            pytest.fail(f"no fer-run window with an overlay appeared (fer-run said: {run.communicate(timeout=20)})")
        ARTIFACTS.mkdir(exist_ok=True)
        cv2.imwrite(str(ARTIFACTS / "fer-run-window.png"), shot)
        b, g, r = (shot[:, :, i].astype(int) for i in range(3))
        assert ((r > 180) & (g > 180) & (b < 90)).sum() > 20  # the FPS counter, in yellow (anti-aliased)
    finally:
        if run is not None and run.poll() is None:
            run.terminate()
            run.wait(timeout=20)
        server.terminate()
        server.wait(timeout=10)
