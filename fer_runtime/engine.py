"""``FaceEngine``: the engine behind fer-run and the Python API: detect, crop, classify all faces of a frame in one
batch, track and smooth."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.backends import load_model
from fer_runtime.background import BackgroundDetector
from fer_runtime.changes import ChangeWatch
from fer_runtime.contract import ContractError
from fer_runtime.cores import usable_cores
from fer_runtime.detect import Detection, create_detector, crop_face
from fer_runtime.follow import FaceFollower
from fer_runtime.profiling import StageTimer
from fer_runtime.providers import ProviderChoice
from fer_runtime.track import IouTracker, iou

# Shipped models by name (``fer-run --model NAME``); the first is the default.
SHIPPED_MODELS = {"ferplus": "ferplus.int8.onnx", "fer2013": "fer2013.int8.onnx"}
DEFAULT_MODEL = "ferplus"
# full-frame detection on one frame in this many (and whenever a followed face is lost)
DEFAULT_DETECT_EVERY = 8
# background detection may also run again this many seconds after the last came back, when that comes first (0: frames
# only). A face coming in is found where the frame changed (changes.py), so at a camera's 30 FPS detecting every 0.03 s
# instead of every 8 frames gains nothing for twice the CPU (fer-bench --pipeline, medians of six runs, two_faces.mp4:
# recall 1.000, IoU 0.892, a new face within 0 frames, half a core; frames only: 1.000, 0.896, 0, a quarter)
DEFAULT_DETECT_PERIOD = 0.0
# after a background detection comes back, the next one due by --detect-every waits at least this many times as long
# as it took, so while faces are followed detection takes at most a third of the helper core, where the video is
# decoded: at full speed, detections back to back slowed the decoder that the frame loop waits on (fer-bench --pipeline,
# 2-core EPYC, docs/runtime.md). At a camera's 30 FPS a 25 ms detection's rest ends long before 8 frames have passed. A
# lost face, a frame with none followed and --detect-period (a time asked for) do not wait.
DETECT_REST = 2.0
# a followed face that full detection misses is kept while its template still matches, for this many detections
MAX_MISSED_DETECTIONS = 2
SAME_FACE_IOU = 0.3
BLANK_MARGIN = 0.2  # box sides around a followed face painted flat before a change search: found already, and costly
# A photo is searched on a copy this wide (a 640x480 one at full size): it finds a 40-pixel face; video at --detect-width
PHOTO_DETECT_WIDTH = 640
# One ONNX Runtime thread for the frame loop: with more, ORT's idle workers spin on the core that OpenCV
# decodes and detects on (moving_face.mp4, 2-core EPYC: capture p50 1.07 -> 0.22 ms, 255 -> 382 FPS).
DEFAULT_THREADS = 1


def opencv_threads_beside_a_stream() -> int:
    """OpenCV's worker threads (process-wide) while a stream runs with background detection: the cores the frame loop
    and the video decoder leave, one at least. On two cores, detection, decoding and the frame loop then take a core's
    share each instead of all fanning out over the same two (issue 48)."""
    return max(1, len(usable_cores()) - 2)


def resolve_model(name_or_path: str | Path | None) -> Path:
    """A shipped model's name (ferplus, fer2013), or a path to any model file with a fer_contract."""
    key = str(name_or_path or DEFAULT_MODEL)
    if key not in SHIPPED_MODELS:
        return Path(key)
    from fer_models import MODELS_DIR

    path = MODELS_DIR / SHIPPED_MODELS[key]
    if not path.is_file():
        raise ContractError(f"the shipped model {path} is missing from this install: pass --model PATH")
    return path


@dataclass
class FaceResult:
    box: tuple[float, float, float, float]
    track_id: int
    label: str
    confidence: float
    probs: np.ndarray  # smoothed
    raw_label: str
    raw_probs: np.ndarray

    def scaled(self, factor: float) -> FaceResult:
        """The same face with its box in pixels ``factor`` times as large (a photo decoded reduced)."""
        return self if factor == 1 else replace(self, box=tuple(v * factor for v in self.box))

    def to_dict(self, classes: tuple[str, ...]) -> dict:
        return {
            "box": [_number(v, 1) for v in self.box],
            "track_id": self.track_id,
            "label": self.label,
            "confidence": _number(self.confidence),
            "raw_label": self.raw_label,
            "probabilities": {c: _number(p) for c, p in zip(classes, self.probs)},
        }


def _number(value: float, digits: int = 4) -> float | None:
    """A JSON number, or null for NaN and infinity (which JSON has no spelling for)."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def _moved(det: Detection, box: tuple[float, float, float, float]) -> Detection:
    """A detection carried to the box its face was followed to (eye landmarks shifted with it)."""
    dx, dy = box[0] - det.box[0], box[1] - det.box[1]
    eyes = None if det.eyes is None else tuple((ex + dx, ey + dy) for ex, ey in det.eyes)
    return Detection(box, det.score, eyes)


def _gray(frame: np.ndarray, gray: np.ndarray | None) -> np.ndarray:
    if gray is not None:
        return gray
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def _carried(found: tuple, then: tuple, now: tuple) -> tuple[float, float, float, float]:
    """The box a detection ``found`` on an earlier frame, carried to this one as the followed face it corrects moved
    from ``then`` to ``now``: its offset from the followed box and its size scaled as the face grew or shrank."""
    scale = now[2] / max(then[2], 1e-6)
    cx = now[0] + now[2] / 2 + (found[0] + found[2] / 2 - then[0] - then[2] / 2) * scale
    cy = now[1] + now[3] / 2 + (found[1] + found[3] / 2 - then[1] - then[3] / 2) * scale
    w, h = found[2] * scale, found[3] * scale
    return (cx - w / 2, cy - h / 2, w, h)


class FaceEngine:
    """``model_path``: a shipped model's name or a model file (opened by ``load_model``); ``detector``: ``"haar"``
    (offline, 400 pixels wide) or a detector ``create_detector`` made (YuNet, another width). ``process_frame`` detects
    on the frame unless ``detect_in_background()`` was called (fer-run does)."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        detector: str | Callable[[np.ndarray], list[Detection]] = "haar",
        *,
        detect_every: int = DEFAULT_DETECT_EVERY,
        smoothing: float = 0.7,
        threads: int = DEFAULT_THREADS,
        provider: str | ProviderChoice | None = None,
        prior: str = "model",
    ) -> None:
        self.model = load_model(resolve_model(model_path), threads=threads, provider=provider, prior=prior)
        self.contract = self.model.contract
        self.classes = self.contract.classes
        self.detector = create_detector(detector) if isinstance(detector, str) else detector
        if detect_every < 1:
            raise ValueError("--detect-every must be at least 1")
        self.detect_every, self.detect_period = detect_every, DEFAULT_DETECT_PERIOD
        self.tracker = IouTracker(smoothing=smoothing)
        self.timer = StageTimer()
        self._frame_index = 0
        self._last_detections: list[Detection] = []
        self._followers: list[FaceFollower] = []
        self._detect_next = False
        self._background: BackgroundDetector | None = None  # detect_in_background()
        self._submitted = 0  # the frame the running background detection was handed, or the last one was adopted on
        self._submitted_at = 0.0  # and when (time.perf_counter())
        self._rested_at = 0.0  # and when the rest after the last one ends (DETECT_REST)
        self._since: list[np.ndarray] = []  # the gray frames since it was handed one, to follow a face it finds to now
        self._opencv_threads: int | None = None  # OpenCV's thread count before detect_in_background, given back on close
        self._changes = ChangeWatch()  # where a face may have come in since, searched on the frame loop (changes.py)

    def detect_in_background(self, period: float = DEFAULT_DETECT_PERIOD) -> FaceEngine:
        """Video and cameras: full detection on a thread of its own (fer-run's default), so that no frame but the first
        waits for it (``_follow_and_adopt``), run again ``detect_every`` frames (and DETECT_REST times its length) or
        ``period`` seconds (0: frames only) after the last, whichever comes first; with ``detect_every=1`` detection
        stays on every frame. Returns the engine."""
        if not period >= 0:
            raise ValueError("--detect-period must be at least 0")
        self.detect_period = period
        if self.detect_every > 1 and self._background is None:
            self._background = BackgroundDetector(self.detector)
            self._opencv_threads = cv2.getNumThreads()
            cv2.setNumThreads(opencv_threads_beside_a_stream())
        return self

    def close(self) -> None:
        """Stops the background detection's thread and gives OpenCV back its thread count (a stream's engine)."""
        if self._background is not None:
            self._background.close()
        if self._opencv_threads is not None:
            # through one thread, so the worker pool is made again from the next thread that needs it: the detection
            # thread may have made it, kept off the frame loop's core (fer_runtime/cores.py)
            cv2.setNumThreads(1)
            cv2.setNumThreads(self._opencv_threads)
            self._opencv_threads = None

    def crop_probabilities(self, crops: list[np.ndarray]) -> np.ndarray:
        """Face crops (BGR or gray uint8, any size) -> probabilities, one row per crop, in contract class order."""
        if not crops:
            return np.zeros((0, len(self.classes)), np.float32)
        return self.model.probabilities(self.contract.preprocess(crops))

    def _detect_or_follow(self, frame: np.ndarray, gray: np.ndarray | None) -> list[Detection]:
        """Full detection every ``detect_every`` frames and whenever a face is lost; in between, each face is
        followed by template matching around its last box, so boxes move with the face on every frame."""
        gray = _gray(frame, gray)
        if self._frame_index % self.detect_every != 0 and self._followers and not self._detect_next:
            moved = []
            for follower, det in zip(self._followers, self._last_detections):
                box = follower.follow(gray)
                if box is None:
                    break  # a face was lost: detect on this frame instead
                moved.append(_moved(det, box))
            else:
                self._last_detections = moved
                return moved
        detections = self.detector(frame)
        if self.detect_every == 1:
            self._followers, self._last_detections = [], detections
            return detections
        kept = self._missed_but_followed(gray, detections)
        # fewer faces than a moment ago: detect again on the next frame rather than k frames later
        self._detect_next = len(detections) + len(kept) < len(self._last_detections)
        self._followers = [FaceFollower(gray, d.box) for d in detections] + [f for f, _ in kept]
        self._last_detections = detections + [d for _, d in kept]
        return self._last_detections

    def _follow_and_adopt(self, frame: np.ndarray, gray: np.ndarray | None) -> list[Detection]:
        """Every face followed on every frame, the full detection running beside the frame loop: handed a frame
        ``detect_every`` frames (and no sooner than DETECT_REST times its length) or ``detect_period`` seconds after the
        last one came back, whichever comes first (at once when a face was lost or none is followed), its faces
        adopted on the frame where it finishes. Only the first frame, with nothing to follow yet, waits for one."""
        gray = _gray(frame, gray)
        if self._frame_index == 0:
            self._adopt(gray, [], self.detector(frame), gray)
            self._submitted_at = time.perf_counter()
            return self._last_detections
        followed, lost = [], False
        for follower, det in zip(self._followers, self._last_detections):
            box = follower.follow(gray)
            lost = lost or box is None
            if box is not None:
                followed.append((follower, _moved(det, box)))
        self._followers, self._last_detections = [f for f, _ in followed], [d for _, d in followed]
        background = self._background
        if background.busy:  # a frame the running detection's new faces are followed over, once it finishes
            self._since.append(gray)
        done = background.take()
        now = time.perf_counter()
        if done is not None:
            self.timer.samples["background"].append(done.seconds)
            self._adopt(*done.tag, done.detections, gray)
            self._submitted, self._submitted_at = self._frame_index, now  # counted from here
            self._rested_at = now + DETECT_REST * done.seconds
        due = (self._frame_index - self._submitted >= self.detect_every and now >= self._rested_at
               or 0 < self.detect_period <= now - self._submitted_at)
        if not background.busy and (lost or not self._followers or due):
            background.submit((gray, list(zip(self._followers, [d.box for d in self._last_detections]))), frame)
            self._submitted, self._submitted_at, self._since = self._frame_index, now, []
        self._look_where_it_changed(frame, gray)
        return self._last_detections

    def _look_where_it_changed(self, frame: np.ndarray, gray: np.ndarray) -> None:
        """A face that came in since the last look, searched for where the frame changed away from the followed faces
        (``changes.py``) and followed from this frame on, instead of from when a background detection handed a later
        frame comes back (at full speed 20 to 60 frames, with its rest). The followed faces are blanked in the regions
        searched: they are found already and are where a cascade spends longest. Detectors without
        ``detect(image, width)``: none."""
        detect = getattr(self.detector, "detect", None)
        width = getattr(self.detector, "detect_width", 0)
        regions = self._changes.regions(gray, [d.box for d in self._last_detections]) if detect and width else []
        if not regions:
            return
        t0, scale, followed = time.perf_counter(), min(1.0, width / frame.shape[1]), len(self._followers)
        m = BLANK_MARGIN
        for x0, y0, x1, y1 in regions:
            part = frame[y0:y1, x0:x1].copy()
            for x, y, w, h in (d.box for d in self._last_detections):
                part[max(0, int(y - m * h) - y0):max(0, int(y + (1 + m) * h) - y0),
                     max(0, int(x - m * w) - x0):max(0, int(x + (1 + m) * w) - x0)] = 128
            for det in detect(part, max(1, round((x1 - x0) * scale))):
                box = (det.box[0] + x0, det.box[1] + y0, det.box[2], det.box[3])
                if all(iou(box, d.box) <= SAME_FACE_IOU for d in self._last_detections):
                    self._followers.append(FaceFollower(gray, box))
                    self._last_detections.append(_moved(det, box))
        seconds = time.perf_counter() - t0
        self._changes.searched(seconds, found=len(self._followers) > followed)
        self.timer.samples["changes"].append(seconds)

    def _adopt(self, gray_then: np.ndarray, then: list, detections: list[Detection], gray: np.ndarray) -> None:
        """The faces a detection found on an earlier frame (``gray_then``, where the followed faces had the boxes
        ``then``) take the place of the followed faces they overlapped there: a face's box is corrected by what the
        detection saw and its template taken from the detection. A new face is followed over the frames since. A
        followed face the detection missed stays while its template matches, for MAX_MISSED_DETECTIONS detections."""
        found, replaced = [], set()
        for det in detections:
            follower = FaceFollower(gray_then, det.box)
            same = [(f, box) for f, box in then if f in self._followers and id(f) not in replaced
                    and iou(box, det.box) > SAME_FACE_IOU]
            if same:
                old, box_then = max(same, key=lambda fb: iou(fb[1], det.box))
                replaced.add(id(old))
                follower.box = _carried(det.box, box_then, old.box)
            elif gray_then is not gray and not all(follower.follow(g) is not None for g in self._since):
                continue  # a new face that has left since
            found.append((follower, _moved(det, follower.box)))
        kept, followed_then = [], {id(f) for f, _ in then}
        for follower, det in zip(self._followers, self._last_detections):
            if id(follower) in replaced or any(iou(det.box, d.box) > SAME_FACE_IOU for _, d in found):
                continue
            if id(follower) in followed_then:  # else found since (changes.py): this detection could not have seen it
                follower.missed_detections += 1
            if follower.missed_detections <= MAX_MISSED_DETECTIONS:
                kept.append((follower, det))
        self._followers = [f for f, _ in found + kept]
        self._last_detections = [d for _, d in found + kept]

    def _missed_but_followed(self, gray: np.ndarray, detections: list[Detection]) -> list[tuple[FaceFollower, Detection]]:
        """Followed faces this detection missed that their template still finds, for MAX_MISSED_DETECTIONS detections
        in a row: Haar misses a face on one frame that it finds on the next, and without this the face would be gone
        until the detection after (two-face video: recall 0.916 of every-frame detection's)."""
        kept = []
        for follower, det in zip(self._followers, self._last_detections):
            found = any(iou(follower.box, d.box) > SAME_FACE_IOU for d in detections)
            if found or follower.missed_detections >= MAX_MISSED_DETECTIONS:
                continue
            box = follower.follow(gray)
            if box is None or any(iou(box, d.box) > SAME_FACE_IOU for d in detections):
                continue
            follower.missed_detections += 1
            kept.append((follower, _moved(det, box)))
        return kept

    def process_image(self, image: np.ndarray, crops: bool = False) -> list[FaceResult]:
        """One photo on its own: every face detected and classified, no tracking, no smoothing across images.

        ``crops``: the image already is a face crop (FER2013-style): no detection, the contract's preprocessing only.
        """
        timer = self.timer
        with timer("detect"):
            h, w = image.shape[:2]
            detections = [Detection((0.0, 0.0, float(w), float(h)), 1.0)] if crops else self._left_to_right(image)
        with timer("preprocess"):
            c = self.contract
            faces = [image] if crops else [crop_face(image, d, c.crop_margin, c.crop_offset) for d in detections]
            batch = self.contract.preprocess(faces) if faces else None
        with timer("classify"):
            probs = self.model.probabilities(batch) if batch is not None else np.zeros((0, len(self.classes)))
        return self._results(detections, probs)

    def process_crops(self, crops: list[np.ndarray]) -> list[FaceResult]:
        """Face crops (BGR or gray uint8, any size), classified in one batch: one result per crop, its box the
        whole crop; the same probabilities and labels as ``process_image(crop, crops=True)`` for each."""
        boxes = [Detection((0.0, 0.0, float(c.shape[1]), float(c.shape[0])), 1.0) for c in crops]
        return self._results(boxes, self.crop_probabilities(crops))

    def _results(self, detections: list[Detection], probs: np.ndarray) -> list[FaceResult]:
        """One photo's faces (or a batch of crops): each labelled on its own, numbered in order, no smoothing."""
        results = []
        for i, (det, p) in enumerate(zip(detections, probs)):
            k = int(p.argmax())
            results.append(FaceResult(det.box, i, self.classes[k], float(p[k]), p, self.classes[k], p))
        return results

    def _left_to_right(self, image: np.ndarray) -> list[Detection]:
        """A photo's faces, searched at PHOTO_DETECT_WIDTH at least (a detector of its own, such as a test's, as it is)."""
        detect = getattr(self.detector, "detect", None)
        width = max(PHOTO_DETECT_WIDTH, getattr(self.detector, "detect_width", 0))
        found = detect(image, width) if detect is not None else self.detector(image)
        return sorted(found, key=lambda d: d.box[0])

    def process_frame(self, frame: np.ndarray, gray: np.ndarray | None = None) -> list[FaceResult]:
        """A stream's next frame: its faces followed and tracked, classified and smoothed. ``gray``: the frame in gray,
        when the source made it already (``Frame.gray``)."""
        timer = self.timer
        if gray is not None and gray.shape != frame.shape[:2]:
            gray = None  # not this frame's
        with timer("detect"):
            follow = self._detect_or_follow if self._background is None else self._follow_and_adopt
            detections = follow(frame, gray)
        self._frame_index += 1
        with timer("preprocess"):
            # a gray model's faces are cut from the gray frame the source made: the pixels converting each crop gives
            # (to a grey level where eye landmarks rotate it), without converting them on the frame loop
            image = gray if self.contract.channels == 1 and gray is not None else frame
            crops = [crop_face(image, d, self.contract.crop_margin, self.contract.crop_offset) for d in detections]
            batch = self.contract.preprocess(crops) if crops else None
        with timer("classify"):
            probs = self.model.probabilities(batch) if batch is not None else np.zeros((0, len(self.classes)))
        with timer("track"):
            tracks = self.tracker.update([d.box for d in detections])
            results = []
            for det, track, p in zip(detections, tracks, probs):
                smoothed = self.tracker.observe(track, p)
                k, raw_k = int(smoothed.argmax()), int(p.argmax())
                results.append(FaceResult(det.box, track.track_id, self.classes[k], float(smoothed[k]), smoothed,
                                          self.classes[raw_k], p))
        return results
