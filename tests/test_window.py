"""fer-run's window for real, under Xvfb (Debian's xvfb and x11-apps packages); skipped where they are absent.

The screenshot is kept as a test artifact in ``test-artifacts/`` (not in git). A window must end within a second of
Ctrl-C, SIGTERM or its close button, and a video in a window plays at the file's frame rate.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_runtime.pipeline import BOX_COLOUR, WINDOW_TITLE

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("xwd")),
                                reason="needs Xvfb and xwd (apt-get install xvfb x11-apps)")  # fmt: skip


@pytest.fixture(scope="module")
def xserver():
    """A bare Xvfb screen (no window manager): the environment for fer-run's window.

    ``-displayfd`` lets Xvfb pick a free display number and write it only once it accepts connections: no race with
    another X server on the same number, and no guessing when it is ready."""
    read_end, write_end = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_end,))  # fmt: skip
    os.close(write_end)
    try:
        with os.fdopen(read_end) as announced:
            ready, _, _ = select.select([announced], [], [], 30)
            display = announced.readline().strip() if ready else ""
        if not display.isdigit():
            pytest.fail(f"Xvfb did not start within 30 s (exit code {server.poll()})")
        yield f":{display}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    return tiny_model_factory(("angry", "happy", "sad"))


def _fer_run(display: str, *args) -> subprocess.Popen:
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    # SIGINT at its default in the child, so that Python turns it into KeyboardInterrupt as in a terminal (a parent
    # that ignores SIGINT, e.g. a background job, would hand the ignore down)
    return subprocess.Popen([sys.executable, "-c", "from fer_runtime.cli import main; main()", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


def _stop(run: subprocess.Popen | None) -> None:
    if run is not None and run.poll() is None:
        run.kill()
        run.wait(timeout=20)


@pytest.mark.parametrize("how, source, code", [
    ("sigterm", "--demo", 130), ("ctrl-c", "--demo", 130), ("close", "--demo", 0), ("sigterm", "image", 130),
])  # fmt: skip
def test_a_photo_in_a_window_ends_within_a_second(xserver, model, how, source, code):
    from .xclose import close_window, window_exists

    args = ["--demo"] if source == "--demo" else ["--source", Path(__file__).resolve().parents[1] / "fer_runtime" / "assets"
                                                  / "demo_face.jpg"]  # fmt: skip
    run = _fer_run(xserver, *args, "--model", model)
    try:
        deadline = time.time() + 60
        while run.poll() is None and not window_exists(xserver, WINDOW_TITLE) and time.time() < deadline:
            time.sleep(0.2)
        assert run.poll() is None, f"fer-run ended before its window showed: {run.communicate()}"
        time.sleep(1.0)  # the window is up and fer-run waits for the user
        assert run.poll() is None, "a photo in a window stays until the user ends it"
        start = time.time()
        if how == "close":
            assert close_window(xserver, WINDOW_TITLE)
        else:
            run.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
        stdout, stderr = run.communicate(timeout=10)
        took = time.time() - start
    finally:
        _stop(run)
    assert took < 1.0, f"fer-run took {took:.2f} s to end after {how}"
    assert run.returncode == code, (stdout, stderr)
    assert "Traceback" not in stderr and "fer-run: 1 images, 1 faces" in stdout
    assert ("(interrupted)" in stdout) == (code == 130)


def test_a_video_in_a_window_plays_at_the_files_frame_rate(xserver, model, face_video_factory):
    video = face_video_factory(frames=30, fps=10)  # 3 s of video
    rates = {}
    for mode in ("--display", "--no-display"):
        run = _fer_run(xserver, "--source", video, "--model", model, mode)
        try:
            stdout, stderr = run.communicate(timeout=90)
        finally:
            _stop(run)
        assert run.returncode == 0, stderr
        rates[mode] = float(re.search(r"fer-run: 30 frames.*?, ([\d.]+) frames/s", stdout).group(1))
    # 30 frames shown at 10 FPS: the last one 2.9 s after the first
    assert 9.0 <= rates["--display"] <= 11.0, rates
    assert rates["--no-display"] > 20, rates  # headless stays as fast as it can


def _overlay_shot(run: subprocess.Popen, env: dict, dump: Path) -> np.ndarray | None:
    """A screenshot with fer-run's overlay on it, taken while the run goes on (None: none within 40 s)."""
    from .xwd import read_xwd

    deadline = time.time() + 40
    while time.time() < deadline and run.poll() is None:
        time.sleep(0.5)
        with open(dump, "wb") as fh:
            subprocess.run(["xwd", "-root", "-silent"], env=env, stdout=fh, timeout=10)
        image = read_xwd(dump)
        if np.all(image == np.asarray(BOX_COLOUR, np.uint8), axis=2).sum() > 200:  # box, label tab, confidence bar
            return image
    return None


def test_the_window_shows_boxes_labels_confidence_and_fps(xserver, model, face_video_factory, tmp_path):
    video = face_video_factory(frames=300, fps=30)  # 10 s in the window: 20 screenshots
    env = {**os.environ, "DISPLAY": xserver, "QT_QPA_PLATFORM": "xcb"}
    run = None
    try:
        # two tries: twice in about ten full-suite runs beside two trainings, no screenshot of a 30 s run caught the
        # overlay although fer-run drew every frame (cause not found); standalone and under load it always did
        for _ in range(2):
            _stop(run)
            run = _fer_run(xserver, "--source", video, "--model", model, "--display")
            shot = _overlay_shot(run, env, tmp_path / "screen.xwd")
            if shot is not None:
                break
        if shot is None:
            run.terminate()
            pytest.fail(f"no fer-run window with an overlay appeared (fer-run said: {run.communicate(timeout=20)})")
        ARTIFACTS.mkdir(exist_ok=True)
        cv2.imwrite(str(ARTIFACTS / "fer-run-window.png"), shot)
        b, g, r = (shot[:, :, i].astype(int) for i in range(3))
        assert ((r > 180) & (g > 180) & (b < 90)).sum() > 20  # the FPS counter, in yellow (anti-aliased)
    finally:
        _stop(run)
