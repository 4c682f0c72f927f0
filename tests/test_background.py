"""Background detection (issue 48): no frame of a stream waits for a full detection, and the faces it finds are
adopted on the frame where it finishes, followed there from the frame it ran on."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from fer_runtime import engine as engine_module
from fer_runtime.detect import Detection
from fer_runtime.engine import FaceEngine
from tests.conftest import CLASSES, numbered_video


@pytest.fixture(scope="module")
def tiny_model(tiny_model_factory):
    return tiny_model_factory(CLASSES)


@pytest.fixture(scope="module")
def full_face():
    """The astronaut's face, 200 px."""
    skimage_data = pytest.importorskip("skimage.data")
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)[30:230, 130:330]


@pytest.fixture(scope="module")
def face(full_face):
    return cv2.resize(full_face, (100, 100))


def frame(face: np.ndarray, i: int, with_b: bool) -> tuple[np.ndarray, list[tuple]]:
    """Face A moving right 4 px a frame; face B, when there, moving left below it."""
    canvas = np.full((480, 640, 3), 90, np.uint8)
    boxes = [(40 + 4 * i, 60, 100, 100)] + ([(500 - 4 * i, 300, 100, 100)] if with_b else [])
    for x, y, w, h in boxes:
        canvas[y : y + h, x : x + w] = face
    noise = np.random.default_rng(i).normal(0, 4, canvas.shape)
    return np.clip(canvas + noise, 0, 255).astype(np.uint8), boxes


def big_faces(big: np.ndarray, i: int) -> np.ndarray:
    """Face A moving right 4 px a frame; from frame 10 face B, moving left below it."""
    canvas = np.full((480, 640, 3), 90, np.uint8)
    for x, y in [(40 + 4 * i, 40)] + ([(440 - 4 * i, 300)] if i >= 10 else []):
        canvas[y : y + 150, x : x + 150] = big
    return np.clip(canvas + np.random.default_rng(i).normal(0, 4, canvas.shape), 0, 255).astype(np.uint8)


class HeldDetector:
    """The true boxes of the frame it is given; a detection off the first frame waits until ``release`` (at most 5 s,
    noted in ``timed_out``): a frame loop that waited for it would stall here."""

    def __init__(self) -> None:
        self.release, self.calls, self.timed_out, self.truth = threading.Event(), [], False, {}

    @staticmethod
    def _key(image: np.ndarray) -> bytes:
        return image.tobytes()[:4096] + image.tobytes()[-4096:]

    def knows(self, image: np.ndarray, boxes: list[tuple]) -> None:
        """``boxes`` are the faces of ``image``."""
        self.truth[self._key(image)] = boxes

    def __call__(self, image: np.ndarray) -> list[Detection]:
        key = self._key(image)
        self.calls.append(threading.current_thread() is threading.main_thread())
        if len(self.calls) > 1 and not self.release.wait(timeout=5.0):
            self.timed_out = True
        return [Detection(tuple(float(v) for v in b), 1.0) for b in self.truth[key]]


def test_no_frame_waits_for_a_full_detection_and_a_new_face_is_adopted_where_it_finishes(tiny_model, face):
    engine = FaceEngine(tiny_model, detect_every=4).detect_in_background(period=0)
    detector = HeldDetector()
    engine.detector = engine._background.detector = detector
    seen = []
    try:
        for i in range(30):
            image, truth = frame(face, i, with_b=i >= 2)
            detector.knows(image, truth)
            if i == 20:  # the detection handed over on a frame with face B finishes now
                detector.release.set()
                for _ in range(500):  # at most 5 s for the thread to finish it
                    if engine._background._done is not None:
                        break
                    threading.Event().wait(0.01)
            seen.append(sorted(r.box[0] for r in engine.process_frame(image)))
    finally:
        detector.release.set()
        engine.close()
    assert not detector.timed_out, "a frame waited for the background detection"
    assert detector.calls[0] and not any(detector.calls[1:])  # the first frame on the frame loop, then the thread
    assert all(len(s) == 1 for s in seen[:20]), seen  # face A followed while the detection is held
    assert abs(seen[19][0] - (40 + 4 * 19)) < 6
    # B was found on frame 4 (the first due after frame 0) and is followed from there to where it is now, on frame 20
    assert len(seen[20]) == 2 and abs(seen[20][1] - (500 - 4 * 20)) < 6, seen[20]
    assert all(len(s) == 2 for s in seen[20:]), seen


def test_a_face_that_comes_in_while_a_detection_runs_is_found_where_the_frame_changed(tiny_model, face):
    """Face B comes in on frame 10 while the background detection handed a frame before it is held: the frame loop
    searches where the frame changed away from face A (changes.py) and follows B from the look after it came in, not
    from when the held detection comes back (frame 20), which does not count B as missed. A's own movement is not taken
    for a new face."""
    big = cv2.resize(face, (150, 150))  # Haar at 400 pixels wide finds it on every frame (the 100-pixel one not)

    engine = FaceEngine(tiny_model, detect_every=4).detect_in_background(period=0)
    held = HeldDetector()  # the thread's detector; engine.detector (Haar) takes the first frame and the looks
    engine._background.detector = held
    seen = []
    try:
        for i in range(24):
            image = big_faces(big, i)
            held.knows(image, [d.box for d in engine.detector(image)])  # Haar's boxes, as the looks find them
            if i == 20:
                held.release.set()
                with engine._background._cond:
                    assert engine._background._cond.wait_for(lambda: engine._background._done is not None, timeout=5)
            seen.append(sorted(r.box[0] for r in engine.process_frame(image)))
            if i == 20:  # the held detection (of a frame without B) adopted
                assert [f.missed_detections for f in engine._followers] == [0, 0], (seen[8:], engine._last_detections)
    finally:
        held.release.set()
        engine.close()
    assert not held.timed_out and len(held.calls) >= 2, held.calls  # the second, handed before B came in, is held
    assert all(len(s) == 1 for s in seen[:10]), seen
    assert all(len(s) == 2 for s in seen[11:]), seen
    assert all(440 - 4 * i <= s[1] <= 440 - 4 * i + 75 for i, s in enumerate(seen[11:], 11)), seen
    assert engine.timer.samples["changes"].count <= 3  # searched on the frames where B came in, not on A's movement
    assert held.calls[1:] and len(seen[21]) == 2


class MissesOnce:
    """Haar, but the first search where the frame changed finds nothing and takes ``seconds``: the cascade missing a
    face on one frame that it finds on the next."""

    def __init__(self, haar, seconds: float) -> None:
        self.haar, self.seconds, self.detect_width, self.missed = haar, seconds, haar.detect_width, False

    def __call__(self, image: np.ndarray) -> list[Detection]:
        return self.haar(image)

    def detect(self, image: np.ndarray, width: int) -> list[Detection]:
        if not self.missed:
            self.missed = True
            time.sleep(self.seconds)
            return []
        return self.haar.detect(image, width)


def test_a_search_where_the_frame_changed_that_finds_nothing_is_made_again_on_the_next_look(tiny_model, face):
    """Face B comes in on frame 10 and the search there misses it (and took 0.3 s): it is searched for again on the
    next look, two frames later, not after the rest of 9 times that search's length, and followed from there."""
    big = cv2.resize(face, (150, 150))

    engine = FaceEngine(tiny_model, detect_every=4).detect_in_background(period=0)
    engine.detector = MissesOnce(engine.detector, seconds=0.3)
    held = HeldDetector()  # full detections never come back: only the searches where the frame changed find B
    engine._background.detector = held
    seen = []
    try:
        for i in range(16):
            image = big_faces(big, i)
            held.knows(image, [])
            seen.append(len(engine.process_frame(image)))
    finally:
        held.release.set()
        engine.close()
    assert engine.detector.missed and seen[:12] == [1] * 12 and seen[12:] == [2] * 4, seen


def test_what_changed_away_from_the_followed_faces_is_where_a_new_face_is_looked_for():
    from fer_runtime.changes import ChangeWatch

    def noisy(seed, light=90):
        return np.clip(np.full((480, 640), light) + np.random.default_rng(seed).normal(0, 6, (480, 640)), 0, 255
                       ).astype(np.uint8)

    watch = ChangeWatch(look_every=1)
    followed = [(100.0, 100.0, 80.0, 80.0)]
    assert watch.regions(noisy(0), followed) == []  # nothing to compare with yet
    assert watch.regions(noisy(1), followed) == []  # sensor noise
    moved = noisy(2)
    moved[110:190, 130:210] = 200  # the followed face's own movement, beside its box
    assert watch.regions(moved, [(120.0, 100.0, 80.0, 80.0)]) == []
    watch.regions(noisy(3), followed)
    came = noisy(4)
    came[300:380, 400:480] = 200  # something new, away from the followed face
    (x0, y0, x1, y1), = watch.regions(came, followed)
    assert x0 <= 400 and y0 <= 300 and x1 >= 480 and y1 >= 380 and (x1 - x0) * (y1 - y0) < 640 * 480 / 4
    assert watch.regions(noisy(5, light=160), followed) == []  # the light changed: left to full detection
    watch.regions(noisy(11), followed)
    scattered = noisy(6)
    for i in range(6):
        scattered[200 + 40 * (i % 2):208 + 40 * (i % 2), 300 + 48 * i:308 + 48 * i] = 250  # six cells, none together
    assert watch.regions(scattered, followed) == []
    watch.regions(noisy(7), followed)
    panned = noisy(8)
    panned[:, 400:] = np.random.default_rng(9).integers(0, 255, (480, 240))  # the camera moved: a textured third
    assert watch.regions(panned, followed) == []
    below = noisy(9)
    below[250:330, 100:180] = 200  # the followed person's body, below the face
    assert watch.regions(below, followed) == []
    watch.regions(noisy(10), followed)
    watch.searched(10.0)  # a search that took 10 s and found a face: no look for 90 s
    assert watch.regions(came, followed) == []
    again = ChangeWatch(look_every=1)
    again.regions(noisy(12), followed)
    assert again.regions(came, followed)
    again.searched(10.0, found=False)  # it found nothing: the same change is searched once more on the next look
    still = noisy(13)
    still[300:380, 400:480] = 200
    assert again.regions(still, followed)
    again.searched(10.0, found=False)  # nothing again: a rest of 9 times both searches
    assert again.regions(still, followed) == []
    gone = ChangeWatch(look_every=1)
    gone.regions(noisy(14), followed)
    assert gone.regions(came, followed)
    gone.searched(0.0, found=False)
    assert gone.regions(noisy(15), followed) == []  # the change to search again has gone: the retry is spent
    assert gone.regions(came, followed)
    gone.searched(0.0, found=False)  # a new change that the search misses is searched again all the same
    assert gone.regions(still, followed)
    every_other = ChangeWatch(look_every=2)
    assert [every_other.regions(im, followed) for im in (noisy(6), noisy(7), noisy(8), came)][3]
    assert every_other.regions(came, followed) == []  # looked at on every second frame only


@pytest.mark.parametrize("period, handed_on", [(0.0, []), (0.05, [3, 7, 11, 15, 19, 23])])
def test_background_detection_also_runs_detect_period_seconds_after_the_last(tiny_model, face, monkeypatch, period,
                                                                              handed_on):
    """Frames 20 ms apart by the engine's clock, as a camera gives them, each detection back before the next frame:
    with a 0.05 s period one is handed over on the third frame after the last came back (counted from the first
    frame's), although --detect-every's 1000 frames never pass; with 0 only the frame count (and a lost face) counts."""
    clock = [0.0]
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    engine = FaceEngine(tiny_model, detect_every=1000).detect_in_background(period)
    detector = HeldDetector()
    detector.release.set()
    engine.detector = engine._background.detector = detector
    frames = [frame(face, i, with_b=False) for i in range(25)]
    handed = []
    try:
        for i, (image, truth) in enumerate(frames):
            clock[0] = 100.0 + 0.02 * i  # perf_counter counts from an arbitrary point
            detector.knows(image, truth)
            assert len(engine.process_frame(image)) == 1
            background = engine._background
            if i and background.busy and engine._submitted == i:
                handed.append(i)
                with background._cond:
                    assert background._cond.wait_for(lambda b=background: b._done is not None, timeout=5.0)
    finally:
        engine.close()
    assert handed == handed_on


def test_after_a_background_detection_the_next_waits_twice_as_long_as_it_took(tiny_model, face, monkeypatch):
    """Frames 20 ms apart by the engine's clock, each detection taking 65 ms by the detection thread's: with
    --detect-every 2 the next is handed over no sooner than 130 ms after the last came back (seven frames), so detection
    takes at most a third of the helper core's time. A face lost (gone from frame 30) is looked for at once all the
    same."""
    from fer_runtime import background as background_module

    clock, ticks = [0.0], iter(np.arange(1000) * 0.065)  # the thread reads its clock as a detection starts and ends
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(background_module, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    engine = FaceEngine(tiny_model, detect_every=2).detect_in_background(period=0)
    held = HeldDetector()
    held.release.set()
    engine.detector = engine._background.detector = held
    handed = []
    try:
        for i in range(34):
            image, truth = frame(face, i, with_b=False) if i < 30 else (np.full((480, 640, 3), 90, np.uint8), [])
            clock[0] = 100.0 + 0.02 * i
            held.knows(image, truth)
            engine.process_frame(image)
            background = engine._background
            if engine._submitted == i and background.busy:
                handed.append(i)
                with background._cond:
                    assert background._cond.wait_for(lambda b=background: b._done is not None, timeout=5.0)
    finally:
        engine.close()
    # handed on 2, taken on 3 (100.06 s): rested until 100.19, so handed on 10; then 18, 26; 30 as the face is lost
    assert handed[:5] == [2, 10, 18, 26, 30], handed  # and on every frame after, with no face to follow


def test_background_detection_is_for_streams_only_and_an_error_in_it_reaches_the_frame_loop(tiny_model, face):
    engine = FaceEngine(tiny_model).detect_in_background()

    def broken(image):
        raise RuntimeError("detector broke")

    first = engine.detector
    engine.detector, engine._background.detector = first, broken
    image, _ = frame(face, 0, with_b=False)
    engine.process_image(image)  # photos: on the call, never the thread
    assert engine._background._thread is None
    with pytest.raises(RuntimeError, match="detector broke"):
        for i in range(40):
            engine.process_frame(frame(face, i, with_b=False)[0])
            if engine._background._thread is not None:
                engine._background._thread.join(timeout=0.5)
    engine.close()


def test_small_faces_a_40_px_face_in_a_photo_and_a_48_px_face_in_video_within_one_detection_period(tiny_model):
    """benchmarks/scripts/small_faces.py's frames: the astronaut's face, its Haar box scaled to 40 or 48 px, in 640x480."""
    pytest.importorskip("skimage")
    from benchmarks.scripts.small_faces import face_box_crop, frame_with_face, video_found
    from fer_runtime.detect import DEFAULT_DETECT_WIDTH

    face = face_box_crop()
    assert len(FaceEngine(tiny_model).process_image(frame_with_face(face, 40))) == 1
    assert video_found(face, 48, DEFAULT_DETECT_WIDTH)


class ThreadNotingCapture:
    """A VideoCapture that notes which thread each read ran on, takes ``delay`` seconds a read, raises at frame
    ``fail_at``, and notes whether it was released in the middle of a read."""

    def __init__(self, cap, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.cap, self.fail_at, self.delay, self.threads = cap, fail_at, delay, []
        self.reading = self.released_mid_read = False

    def read(self):
        self.reading = True
        try:
            self.threads.append(threading.current_thread().name)
            if self.fail_at is not None and len(self.threads) > self.fail_at:
                raise RuntimeError("decoder broke")
            time.sleep(self.delay)
            return self.cap.read()
        finally:
            self.reading = False

    def release(self):
        self.released_mid_read = self.reading
        self.cap.release()

    def __getattr__(self, name):
        return getattr(self.cap, name)


def test_a_video_is_decoded_ahead_on_a_thread_of_its_own_every_frame_in_order(tmp_path, monkeypatch):
    from fer_runtime import sources
    from fer_runtime.sources import VideoSource

    path = numbered_video(tmp_path / "n.mp4")
    inline = [f.image for f in VideoSource(path, prefetch=0)]
    source = VideoSource(path)
    source.cap = capture = ThreadNotingCapture(source.cap)
    ahead = list(source)
    source.close()
    assert len(ahead) == len(inline) == 12 and [f.index for f in ahead] == list(range(12))
    assert all(np.array_equal(a.image, b) for a, b in zip(ahead, inline))
    assert set(capture.threads) == {"fer-decode"}

    # a run that stops early (--max-frames, Ctrl-C) ends the reader, which waits on a full queue; so does a loop
    # that stops taking frames without closing the source
    source = VideoSource(path, prefetch=2)
    frames = iter(source)
    next(frames)
    source.close()
    assert not source._ahead.thread.is_alive()
    source = VideoSource(path, prefetch=2)
    frames = iter(source)
    next(frames)
    frames.close()
    assert not source._ahead.thread.is_alive()
    source.close()

    # closed from another thread while the frame loop waits for a frame: the loop ends, and the capture is released
    # after the read in progress, not during it
    monkeypatch.setattr(sources, "JOIN_S", 0.05)  # closing gives up waiting for the decoder mid-read
    source = VideoSource(path)
    source.cap = capture = ThreadNotingCapture(source.cap, delay=0.3)
    done = threading.Event()
    threading.Thread(target=lambda: (list(source), done.set()), daemon=True).start()
    time.sleep(0.1)
    source.close()
    assert done.wait(2.0) and capture.threads and not capture.released_mid_read

    # an error in decoding ends the run in the frame loop, not silently in the thread
    source = VideoSource(path)
    source.cap = ThreadNotingCapture(source.cap, fail_at=5)
    with pytest.raises(RuntimeError, match="decoder broke"):
        list(source)
    source.close()


def test_opencv_keeps_its_thread_count_for_photos_and_gets_it_back_when_a_stream_ends(tiny_model, face, tmp_path,
                                                                                    monkeypatch):
    before = cv2.getNumThreads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    engine = FaceEngine(tiny_model).detect_in_background()
    assert cv2.getNumThreads() == 1  # two cores: the detection keeps to the one the frame loop and decoder leave
    engine.close()
    assert cv2.getNumThreads() == before
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert engine_module.opencv_threads_beside_a_stream() == 6

    seen = []
    real = FaceEngine.detect_in_background
    monkeypatch.setattr(FaceEngine, "detect_in_background", lambda self, *a, **k: seen.append(1) or real(self, *a, **k))
    from click.testing import CliRunner

    from fer_runtime.cli import main as run_main

    cv2.imwrite(str(tmp_path / "face.png"), face)
    r = CliRunner().invoke(run_main, ["--model", str(tiny_model), "--source", str(tmp_path / "face.png"), "--no-display"])
    assert r.exit_code == 0 and not seen, r.output  # a photo: detection on the call, OpenCV untouched


@pytest.mark.parametrize("step", [6, 40])
def test_a_followed_face_is_looked_for_near_its_box_first_and_in_the_whole_window_when_it_moved_far(face, step):
    """A 100-pixel face moved 6 px (inside the near window) or 40 px (outside it, inside the whole one) is found where
    it went."""
    from fer_runtime.follow import NEAR_SEARCH, FaceFollower

    def at(x: int) -> np.ndarray:
        gray = np.full((480, 640), 90, np.uint8)
        gray[150:250, x : x + 100] = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
        return gray

    follower = FaceFollower(at(200), (200.0, 150.0, 100.0, 100.0))
    assert (step > 100 * NEAR_SEARCH) == (step == 40)
    box = follower.follow(at(200 + step))
    assert box is not None and abs(box[0] - (200 + step)) <= 3 and abs(box[1] - 150) <= 3, box


def _face_at(face: np.ndarray, side: int, x: float, y: float, seed: int) -> np.ndarray:
    """A gray 640x480 frame with the face ``side`` pixels wide at (x, y), fractions of a pixel and beyond the frame's
    edges included, and a little camera noise."""
    canvas = np.full((480, 640), 90, np.float32)
    canvas[:side, :side] = cv2.cvtColor(cv2.resize(face, (side, side)), cv2.COLOR_BGR2GRAY)
    moved = cv2.warpAffine(canvas, np.float32([[1, 0, x], [0, 1, y]]), (640, 480), flags=cv2.INTER_LINEAR,
                           borderValue=90)
    return np.clip(moved + np.random.default_rng(seed).normal(0, 3, moved.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("side", [150, 220])
def test_a_followed_box_lands_between_template_pixels_where_the_face_went(face, side):
    """A face is matched as a 32-pixel template, so a template pixel is 4.7 frame pixels at 150 px and 6.9 at 220:
    moved by steps that are not whole template pixels, from a box at fractions of a pixel, the box follows it to within
    a pixel (the match's peak between cells), not to the nearest cell (up to 3.4 px off)."""
    from fer_runtime.follow import FaceFollower

    errors = []
    for i, step in enumerate((1.6, 3.1, 6.9, 8.4, 11.7, -2.3, -7.6, -10.2)):
        x, y = 200.4, 100.7
        follower = FaceFollower(_face_at(face, side, x, y, i), (x, y, float(side), float(side)))
        box = follower.follow(_face_at(face, side, x + step, y - step / 2, 100 + i))
        assert box is not None
        errors.append(max(abs(box[0] - (x + step)), abs(box[1] - (y - step / 2))))
    assert max(errors) < 1.0 and np.mean(errors) < 0.6, errors


@pytest.mark.parametrize("scale", [0.7, 0.3, 0.15, 1.4])
def test_the_followers_shrink_says_where_each_pixel_came_from(scale):
    """Shrunk by pyrDown steps and a bilinear rest, a ramp whose value is the column's position keeps it: the result's
    column j holds (j + 0.5) / scale - lead, the position shrink reports (away from the borders)."""
    from fer_runtime.follow import shrink

    ramp = np.tile(np.arange(400, dtype=np.float32), (60, 1))
    small, lead = shrink(ramp, scale)
    assert abs(small.shape[1] - 400 * scale) <= 1.5
    inner = slice(4, small.shape[1] - 4)
    expected = (np.arange(small.shape[1], dtype=np.float32) + 0.5) / scale - lead
    np.testing.assert_allclose(small[small.shape[0] // 2, inner], expected[inner], atol=0.05)


def test_a_face_partly_beyond_the_frames_edge_is_followed_where_it_is_also_once_its_box_grew(full_face):
    """A face whose box starts 40 px left of and 30 px above the frame: its template holds only the part in the frame,
    and the box is still placed by the whole face, not by that part's corner; also once the face has grown and its box
    with it (as a detection's correction carries it), the template being cut from the smaller face."""
    from fer_runtime.follow import FaceFollower

    big = full_face
    follower = FaceFollower(_face_at(big, 150, -40, -30, 0), (-40.0, -30.0, 150.0, 150.0))
    box = follower.follow(_face_at(big, 150, -34, -27, 1))
    assert box is not None and abs(box[0] - -34) < 1.0 and abs(box[1] - -27) < 1.0, box
    follower.box = (-44.0, -33.0, 165.0, 165.0)
    box = follower.follow(_face_at(big, 165, -44, -33, 2))
    assert box is not None and abs(box[0] - -44) < 1.5 and abs(box[1] - -33) < 1.5, box


def test_a_large_face_with_a_sliver_in_the_frame_is_not_followed():
    """A 400 px box with 4 rows inside the frame would be a template under one pixel high: no template, so the face
    is detected again, where shrinking it failed in OpenCV."""
    from fer_runtime.follow import FaceFollower

    follower = FaceFollower(np.full((480, 640), 90, np.uint8), (100.0, 476.0, 400.0, 400.0))
    assert follower.template is None and follower.follow(np.full((480, 640), 90, np.uint8)) is None


@pytest.mark.parametrize("side", [150, 300])
def test_a_still_face_keeps_its_box(face, side):
    """A face that does not move is followed where it is, to a tenth of a template pixel (0.5 px at 150 px, 0.9 at
    300), large ones too: the template is shrunk with the face's surroundings, as the window is, so pyrDown's reflected
    border does not pull the match aside (1.3 px at 300)."""
    from fer_runtime.follow import TEMPLATE_SIDE, FaceFollower

    follower = FaceFollower(_face_at(face, side, 120.3, 90.6, 0), (120.3, 90.6, float(side), float(side)))
    errors = []
    for i in range(1, 4):
        box = follower.follow(_face_at(face, side, 120.3, 90.6, i))
        assert box is not None
        errors.append(max(abs(box[0] - 120.3), abs(box[1] - 90.6)))
    assert max(errors) < 0.1 * side / TEMPLATE_SIDE, errors


@pytest.mark.parametrize("channels", [1, 3])
def test_a_gray_models_faces_are_cut_from_the_sources_gray_frame_with_the_same_probabilities(tiny_model_factory, face,
                                                                                             channels, monkeypatch):
    """A gray model's faces come from the gray frame the source made, not converted crop by crop on the frame loop, and
    are classified exactly as before; a colour model's come from the colour frame."""
    model = tiny_model_factory(CLASSES, channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)
    image, boxes = frame(face, 3, True)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    detections = [Detection(box) for box in boxes]
    convert, crops_converted = cv2.cvtColor, []

    def counted(picture, code, *args, **kwargs):
        crops_converted.append(picture.shape[:2] != image.shape[:2])
        return convert(picture, code, *args, **kwargs)

    runs = []
    for given in (None, gray):
        engine = FaceEngine(model, lambda _: detections, detect_every=1)
        monkeypatch.setattr(cv2, "cvtColor", counted)
        crops_converted.clear()
        runs.append(engine.process_frame(image, given))
        monkeypatch.setattr(cv2, "cvtColor", convert)
        engine.close()
    assert any(crops_converted) == (channels == 3)  # with the source's gray, a gray model converts no crop
    assert len(runs[0]) == len(runs[1]) == 2 and [r.box for r in runs[0]] == [r.box for r in runs[1]]
    for before, now in zip(*runs):
        np.testing.assert_array_equal(before.raw_probs, now.raw_probs)


def test_a_gray_of_another_size_than_the_frame_is_not_used(tiny_model, face):
    """A source's gray that is not the frame's own (another size) is ignored: the frame is converted instead."""
    image, boxes = frame(face, 3, True)
    detections = [Detection(box) for box in boxes]
    runs = []
    for given in (None, np.zeros((240, 320), np.uint8)):
        engine = FaceEngine(tiny_model, lambda _: detections, detect_every=1)
        runs.append(engine.process_frame(image, given))
        engine.close()
    assert len(runs[0]) == len(runs[1]) == 2
    for before, now in zip(*runs):
        np.testing.assert_array_equal(before.raw_probs, now.raw_probs)


def test_a_videos_frames_come_gray_from_the_decoding_thread_and_the_frame_loop_converts_none(tiny_model, tmp_path,
                                                                                            monkeypatch):
    """Every frame is followed in gray: the decoding thread makes it (the helper core), so the frame loop converts no
    whole frame but the first, which the first detection takes on the frame loop."""
    from fer_runtime.pipeline import run_pipeline
    from fer_runtime.sources import VideoSource

    path = numbered_video(tmp_path / "v.mp4", 12)
    convert, on_loop = cv2.cvtColor, []

    def counted(image, code, *args, **kwargs):
        if code == cv2.COLOR_BGR2GRAY and image.shape[:2] == (120, 160):
            on_loop.append(threading.current_thread() is threading.main_thread())
        return convert(image, code, *args, **kwargs)

    monkeypatch.setattr(cv2, "cvtColor", counted)
    source = VideoSource(str(path))
    frames = list(source)
    source.close()
    assert len(frames) == 12 and not any(on_loop)
    assert all(np.array_equal(f.gray, convert(f.image, cv2.COLOR_BGR2GRAY)) for f in frames)
    on_loop.clear()
    engine = FaceEngine(tiny_model, detect_every=4).detect_in_background(period=0)
    try:
        stats = run_pipeline(engine, VideoSource(str(path)))
    finally:
        engine.close()
    assert stats["frames"] == 12 and on_loop.count(True) <= 1, on_loop
