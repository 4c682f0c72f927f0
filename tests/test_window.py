"""fer-run's window: how it waits and paces, on a fake clock (everywhere), and for real under Xvfb (Debian's xvfb),
driven and photographed through libX11 (tests/x11.py); the X tests skip only where Xvfb or libX11 is absent.

The screenshot is kept as a test artifact in ``test-artifacts/`` (not in git). A photo stays in the window until q,
Esc, its close button, Ctrl-C or SIGTERM ends the run (q, Esc and the close button with exit code 0, the signals with
130); a video in a window plays at the file's frame rate, and without a window frames go as fast as they are made.
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
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fer_runtime import pipeline
from fer_runtime.pipeline import BOX_COLOUR, POLL_MS, WINDOW_TITLE

from . import x11

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
DEMO = Path(__file__).resolve().parents[1] / "fer_runtime" / "assets" / "demo_face.jpg"


# --------------------------------------------------------------------------- the window on a fake clock


class FakeGui:
    """cv2.imshow / waitKey / getWindowProperty on a fake clock: waitKey(ms) lets ``ms`` pass and returns the key
    pressed by then, if any."""

    def __init__(self, keys: dict[float, int] | None = None, closed_at: float | None = None):
        self.now = 0.0
        self.keys = dict(keys or {})
        self.closed_at = closed_at
        self.waits: list[int] = []
        self.shown: list[float] = []  # the clock at each imshow

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(cv2, "imshow", lambda title, image: self.shown.append(self.now))
        monkeypatch.setattr(cv2, "waitKey", self.wait_key)
        monkeypatch.setattr(cv2, "getWindowProperty", lambda title, prop: 0.0 if self.closed else 1.0)

    @property
    def closed(self) -> bool:
        return self.closed_at is not None and self.now >= self.closed_at

    def clock(self) -> float:
        return self.now

    def wait_key(self, ms: int) -> int:
        assert ms >= 1, "waitKey(0) waits for a key forever: no signal or close would be seen meanwhile"
        self.waits.append(ms)
        self.now += ms / 1000
        assert self.now < 600, "still waiting after 10 minutes on the fake clock"
        due = [t for t in self.keys if t <= self.now]
        return self.keys.pop(min(due)) if due else -1

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _window(gui: FakeGui, **source) -> pipeline.Window:
    window = pipeline.Window(SimpleNamespace(**source))
    window.clock = gui.clock
    return window


IMAGE = np.zeros((4, 4, 3), np.uint8)


@pytest.mark.parametrize("key", [ord("q"), 27])
def test_a_photo_stays_until_q_or_esc_looking_at_keys_often(monkeypatch, key):
    gui = FakeGui(keys={7.0: key})
    gui.install(monkeypatch)
    window = _window(gui, independent=True, paths=["one.jpg"])
    assert window.show(IMAGE, None) is True  # the user asked to stop
    assert 7.0 <= gui.now < 7.0 + POLL_MS / 1000 + 1e-9  # not before the key, and not long after it
    # short waits only: Ctrl-C and SIGTERM raise between two of them, so a run ends within POLL_MS of one
    assert max(gui.waits) <= POLL_MS <= 1000 and len(gui.waits) >= 7000 // POLL_MS


def test_a_photo_window_that_is_closed_ends_the_run(monkeypatch):
    gui = FakeGui(keys={5.0: ord("x")}, closed_at=3.0)  # another key does nothing; the close button ends it
    gui.install(monkeypatch)
    window = _window(gui, independent=True, paths=["one.jpg"])
    assert window.show(IMAGE, None) is True
    assert 3.0 <= gui.now < 3.0 + POLL_MS / 1000 + 1e-9


def test_a_video_in_a_window_is_shown_at_the_files_frame_times(monkeypatch):
    gui = FakeGui()
    gui.install(monkeypatch)
    window = _window(gui, independent=False, timeline=True)
    gui.advance(5.0)  # opening the file and the first detection take a while: the video starts when first shown
    first = gui.now
    called, returned = [], []
    for i in range(30):  # 10 frames a second
        called.append(gui.now - first)
        assert window.show(IMAGE, i / 10) is False
        returned.append(gui.now - first)
        gui.advance(0.004 if i != 11 else 0.25)  # the frame after frame 11 takes longer than a frame's time to make
    for i, (c, r) in enumerate(zip(called, returned)):
        # each frame stays on screen until the next one's time in the file; one made late is shown at once (it does
        # not push the frames after it back)
        assert i / 10 - 1e-9 <= r < max(i / 10, c) + 0.002, (i, c, r)
    assert called[12] > 1.2 and called[14] < 1.4  # frames 12 and 13 came late, frame 14 on time again
    assert max(gui.waits) <= POLL_MS  # a q or a signal is seen mid-video too


def test_a_video_in_a_window_stops_at_q(monkeypatch):
    gui = FakeGui(keys={0.5: ord("q")})
    gui.install(monkeypatch)
    window = _window(gui, independent=False, timeline=True)
    ended = next((i for i in range(30) if window.show(IMAGE, i / 10)), None)
    assert ended in (5, 6), f"q at 0.5 s ended the video at frame {ended}"


def test_without_a_window_frames_go_as_fast_as_they_are_made(monkeypatch, tiny_model_factory, face_video_factory):
    from fer_runtime.cli import main as run_cli

    gui = FakeGui()
    gui.install(monkeypatch)
    video = face_video_factory(frames=30, fps=10)
    r = CliRunner().invoke(run_cli, ["--source", str(video), "--model", str(tiny_model_factory()), "--no-display"])
    assert r.exit_code == 0, r.output
    assert "fer-run: 30 frames" in r.output
    assert gui.shown == [] and gui.waits == []  # nothing shown, no wait for the file's frame times


# --------------------------------------------------------------------------- the window for real, under Xvfb


@pytest.fixture(scope="module")
def xserver():
    """A bare Xvfb screen (no window manager): the environment for fer-run's window.

    ``-displayfd`` lets Xvfb pick a free display number and write it only once it accepts connections: no race with
    another X server on the same number, and no guessing when it is ready."""
    if not shutil.which("Xvfb") or not x11.available():
        pytest.skip("needs Xvfb and libX11 (apt-get install xvfb)")
    read_end, write_end = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_end,))
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
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _stop(run: subprocess.Popen | None) -> None:
    if run is not None and run.poll() is None:
        run.kill()
        run.wait(timeout=20)


def _wait_for_window(display: str, run: subprocess.Popen) -> None:
    deadline = time.time() + 120  # a bound for a broken run only: the window shows in about a second
    while run.poll() is None and not x11.window_exists(display, WINDOW_TITLE) and time.time() < deadline:
        time.sleep(0.2)
    assert run.poll() is None, f"fer-run ended before its window showed: {run.communicate()}"
    assert x11.window_exists(display, WINDOW_TITLE), "no fer-run window"


@pytest.mark.parametrize("how, source, code", [
    ("q", "--demo", 0), ("Escape", "--demo", 0), ("close", "--demo", 0),
    ("sigterm", "--demo", 130), ("ctrl-c", "--demo", 130), ("sigterm", "image", 130),
])
def test_a_photo_in_a_window_stays_until_the_user_ends_it(xserver, model, how, source, code):
    args = ["--demo"] if source == "--demo" else ["--source", DEMO]
    run = _fer_run(xserver, *args, "--model", model)
    try:
        _wait_for_window(xserver, run)
        time.sleep(1.0)  # the window is up and fer-run waits for the user
        assert run.poll() is None, "a photo in a window stays until the user ends it"
        if how == "close":
            assert x11.close_window(xserver, WINDOW_TITLE)
        elif how in ("q", "Escape"):
            assert x11.press_key(xserver, WINDOW_TITLE, how)
        else:
            run.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
        stdout, stderr = run.communicate(timeout=60)  # a bound for a run that does not end, not a speed
    finally:
        _stop(run)
    assert run.returncode == code, (stdout, stderr)
    assert "Traceback" not in stderr and "fer-run: 1 images, 1 faces" in stdout
    assert ("(interrupted)" in stdout) == (code == 130)
    assert not x11.window_exists(xserver, WINDOW_TITLE)


def test_a_video_in_a_window_is_not_played_faster_than_the_file(xserver, model, face_video_factory):
    video = face_video_factory(frames=30, fps=10)  # 3 s of video
    run = _fer_run(xserver, "--source", video, "--model", model, "--display")
    try:
        stdout, stderr = run.communicate(timeout=300)
    finally:
        _stop(run)
    assert run.returncode == 0, stderr
    rate = float(re.search(r"fer-run: 30 frames.*?, ([\d.]+) frames/s", stdout).group(1))
    # the last of 30 frames at 10 FPS is shown 2.9 s after the first: a busy machine is slower, never faster
    assert rate <= 30 / 2.9, rate


def _overlay(shot: np.ndarray) -> int:
    """Pixels in fer-run's box colour: the box, the label tab and the confidence bar."""
    return int(np.all(shot == np.asarray(BOX_COLOUR, np.uint8), axis=2).sum())


def _yellow(shot: np.ndarray) -> int:
    """Pixels of the FPS counter, in yellow (anti-aliased)."""
    b, g, r = (shot[:, :, i].astype(int) for i in range(3))
    return int(((r > 180) & (g > 180) & (b < 90)).sum())


def test_a_photo_in_the_window_shows_its_box_label_and_confidence_and_no_fps(xserver, model):
    run = _fer_run(xserver, "--demo", "--model", model)
    try:
        _wait_for_window(xserver, run)
        time.sleep(1.0)
        shot = x11.screenshot(xserver)
        assert x11.press_key(xserver, WINDOW_TITLE, "q")
        run.communicate(timeout=60)
    finally:
        _stop(run)
    ARTIFACTS.mkdir(exist_ok=True)
    cv2.imwrite(str(ARTIFACTS / "fer-run-window-photo.png"), shot)
    assert _overlay(shot) > 200 and _yellow(shot) < 5


def test_a_video_in_the_window_shows_boxes_labels_confidence_and_fps(xserver, model, face_video_factory):
    video = face_video_factory(frames=150, fps=30)  # 5 s in the window
    run = _fer_run(xserver, "--source", video, "--model", model, "--display")
    best, shots = None, 0
    try:
        _wait_for_window(xserver, run)
        while run.poll() is None:  # screenshots until the video ends (the run ends by itself)
            shot = x11.screenshot(xserver)
            shots += 1
            if _overlay(shot) > 200 and _yellow(shot) > 20:
                best = shot
                break
            time.sleep(0.1)
        stdout, stderr = run.communicate(timeout=300)
    finally:
        _stop(run)
    assert run.returncode == 0, stderr
    assert best is not None, f"none of {shots} screenshots of the playing video shows the overlay and the FPS counter"
    ARTIFACTS.mkdir(exist_ok=True)
    cv2.imwrite(str(ARTIFACTS / "fer-run-window.png"), best)
