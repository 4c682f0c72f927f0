"""The frame loop behind fer-run (and fer-bench --pipeline): source in, faces classified, outputs written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.classifier import FaceExpressionClassifier, FaceResult
from fer_runtime.outputs import atomic_path
from fer_runtime.sources import SourceError

BOX_COLOUR = (0, 200, 0)  # BGR


def draw(frame: np.ndarray, faces: list[FaceResult], fps: float | None = None) -> np.ndarray:
    """Per face: its box, a label with the calibrated confidence on a solid tab, and a confidence bar; the FPS top
    left when given (video and cameras; a photo has no frame rate)."""
    out = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for f in faces:
        x, y, w, h = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x, y), (x + w, y + h), BOX_COLOUR, 2)
        text = f"{f.label} {f.confidence:.0%}"
        (tw, th), base = cv2.getTextSize(text, font, 0.55, 1)
        top = max(0, y - th - base - 6)
        cv2.rectangle(out, (x - 1, top), (x + max(tw + 8, w) + 1, y), BOX_COLOUR, -1)
        cv2.putText(out, text, (x + 4, y - base - 3), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        bar_y = min(out.shape[0] - 6, y + h + 4)
        cv2.rectangle(out, (x, bar_y), (x + w, bar_y + 6), (60, 60, 60), -1)
        cv2.rectangle(out, (x, bar_y), (x + int(round(w * f.confidence)), bar_y + 6), BOX_COLOUR, -1)
    if fps is not None:
        cv2.putText(out, f"{fps:.1f} FPS", (8, 20), font, 0.6, (0, 255, 255), 1, cv2.LINE_AA)
    return out


def describe(faces: list[FaceResult]) -> str:
    """'happy 0.91, neutral 0.55' for a line of headless output: faces from left to right."""
    ordered = sorted(faces, key=lambda f: f.box[0])
    return ", ".join(f"{f.label} {f.confidence:.2f}" for f in ordered) or "no face"


class RunOutputs:
    """What a run writes: JSONL records, an annotated video or annotated images. Closed however the run ends."""

    def __init__(self, source, save: str | None, json_path: str | None):
        self.source, self.save = source, save
        self.independent = bool(getattr(source, "independent", False))
        self.jsonl = open(json_path, "w") if json_path else None  # noqa: SIM115 - closed in close()
        self.writer = None

    def record(self, frame, faces: list[FaceResult], classes) -> None:
        if self.jsonl:
            record = {"frame": frame.index}
            if frame.timestamp is not None:  # photos have no time: their records name the file instead
                record["timestamp"] = round(frame.timestamp, 4)
            record["faces"] = [f.to_dict(classes) for f in faces]
            if frame.name:
                record["file"] = frame.name
            self.jsonl.write(json.dumps(record) + "\n")

    def annotated(self, frame, image: np.ndarray) -> None:
        if not self.save:
            return
        if self.independent:
            _save_image(image, self.save, frame.name, len(self.source.paths) > 1)
            return
        if self.writer is None:
            h, w = image.shape[:2]
            self.writer = cv2.VideoWriter(self.save, cv2.VideoWriter_fourcc(*"mp4v"), self.source.fps or 25.0, (w, h))
            if not self.writer.isOpened():
                raise SourceError(f"cannot write video {self.save}")
        self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if self.jsonl:
            self.jsonl.close()


def run_pipeline(
    clf: FaceExpressionClassifier,
    source,
    display: bool = False,
    save: str | None = None,
    json_path: str | None = None,
    max_frames: int | None = None,
    echo=None,
    crops: bool = False,
) -> dict:
    """Process every frame the source yields; outputs are flushed even on Ctrl-C or SIGTERM.

    Image sources are classified one file at a time (``clf.process_image``), video and cameras as a stream
    with tracking and smoothing (``clf.process_frame``). ``echo`` gets one readable line per image, or per
    second of video.
    """
    independent = bool(getattr(source, "independent", False))
    outputs = RunOutputs(source, save, json_path)
    window = Window(source) if display else None
    frames = faces_total = 0
    corrupt: list[str] = []
    labels: dict[str, int] = {}
    start = time.perf_counter()
    fps, next_line = 0.0, 1.0
    interrupted = False
    timer = clf.timer
    try:
        it = iter(source)
        while max_frames is None or frames < max_frames:
            with timer("capture"):
                frame = next(it, None)
            if frame is None:
                break
            if frame.image is None or frame.image.size == 0:
                corrupt.append(frame.name or f"frame {frame.index}")
                if echo and independent:
                    echo(f"{frame.name}: unreadable, skipped")
                continue
            t0 = time.perf_counter()
            faces = clf.process_image(frame.image, crops) if independent else clf.process_frame(frame.image)
            frames += 1
            faces_total += len(faces)
            for f in faces:
                labels[f.label] = labels.get(f.label, 0) + 1
            outputs.record(frame, faces, clf.classes)
            if echo and independent:
                echo(f"{frame.name}: {describe(faces)}")
            elif echo and frame.timestamp >= next_line:
                echo(f"{frame.timestamp:7.1f}s: {describe(faces)}")
                next_line = frame.timestamp + 1.0
            if display or save:
                with timer("draw"):
                    annotated = draw(frame.image.copy(), faces, None if independent else fps)
                outputs.annotated(frame, annotated)
                if window is not None and window.show(annotated, frame.timestamp):
                    break
            timer.samples["frame"].append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            fps = frames / elapsed if elapsed > 0 else 0.0
    except KeyboardInterrupt:
        interrupted = True
    finally:
        outputs.close()
        source.close()
        if window is not None:
            window.close()
    elapsed = time.perf_counter() - start
    return {
        "frames": frames, "faces": faces_total, "corrupt_frames": len(corrupt), "corrupt": corrupt, "labels": labels,
        "seconds": elapsed, "fps": frames / elapsed if elapsed > 0 else 0.0, "interrupted": interrupted,
        "source_lost": bool(getattr(source, "lost", False)), "stages": timer.summary(),
    }  # fmt: skip


WINDOW_TITLE = "fer-run (q to quit)"
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q or Esc
# How often a waiting window looks at its keys and whether it was closed; Ctrl-C and SIGTERM, whose handlers run
# between these calls, end a run within this too.
POLL_MS = 50


class Window:
    """fer-run's window. A video file plays at its own frame rate (the frame's position in the file is its time on
    screen), a camera as it comes, one photo stays until q, Esc or the window is closed. ``show`` is True when the
    user asked to stop; Ctrl-C and SIGTERM come through as KeyboardInterrupt between short waits."""

    def __init__(self, source) -> None:
        self.single_image = bool(getattr(source, "independent", False)) and len(source.paths) == 1
        self.timeline = bool(getattr(source, "timeline", False))
        self.clock = time.perf_counter
        self.start: float | None = None

    def show(self, image: np.ndarray, timestamp: float | None) -> bool:
        cv2.imshow(WINDOW_TITLE, image)
        if self.single_image:
            return self._wait(None)
        if self.timeline and timestamp is not None:
            if self.start is None:
                self.start = self.clock() - timestamp
            return self._wait(self.start + timestamp)
        return self._poll(1)

    def _wait(self, until: float | None) -> bool:
        """Keys and the close button looked at every POLL_MS until ``until`` (perf_counter time; None: forever)."""
        while True:
            left_ms = POLL_MS if until is None else int((until - self.clock()) * 1000)
            if left_ms < 1:
                return self._poll(1)
            if self._poll(min(left_ms, POLL_MS)):
                return True

    def _poll(self, ms: int) -> bool:
        if cv2.waitKey(ms) & 0xFF in QUIT_KEYS:
            return True
        return not self.is_open()

    def is_open(self) -> bool:
        try:
            return cv2.getWindowProperty(WINDOW_TITLE, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:  # some backends raise for a window that is gone
            return False

    def close(self) -> None:
        cv2.destroyAllWindows()
        cv2.waitKey(1)  # lets the GUI backend take the window down before the process goes on or exits


def _save_image(image: np.ndarray, save: str, name: str, many: bool) -> None:
    """An annotated photo in the format of its extension: ``save`` itself, or ``save/<name>`` for a folder of images."""
    target = Path(save) / name if many else Path(save)
    if many:
        target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise SourceError(f"cannot write image {target}: use a file name ending in .png or .jpg")
