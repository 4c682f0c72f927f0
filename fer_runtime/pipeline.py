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


def draw(frame: np.ndarray, faces: list[FaceResult], fps: float) -> np.ndarray:
    """Per face: its box, a label with the calibrated confidence on a solid tab, and a confidence bar; FPS top left."""
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
    cv2.putText(out, f"{fps:.1f} FPS", (8, 20), font, 0.6, (0, 255, 255), 1, cv2.LINE_AA)
    return out


def describe(faces: list[FaceResult]) -> str:
    """'happy 0.91, neutral 0.55' for a line of headless output."""
    return ", ".join(f"{f.label} {f.confidence:.2f}" for f in faces) or "no face"


class RunOutputs:
    """What a run writes: JSONL records, an annotated video or annotated images. Closed however the run ends."""

    def __init__(self, source, save: str | None, json_path: str | None):
        self.source, self.save = source, save
        self.independent = bool(getattr(source, "independent", False))
        self.jsonl = open(json_path, "w") if json_path else None  # noqa: SIM115 - closed in close()
        self.writer = None

    def record(self, frame, faces: list[FaceResult], classes) -> None:
        if self.jsonl:
            record = {"frame": frame.index, "timestamp": round(frame.timestamp, 4),
                      "faces": [f.to_dict(classes) for f in faces]}  # fmt: skip
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
            if echo and (independent or frame.timestamp >= next_line):
                echo(f"{frame.name}: {describe(faces)}" if independent else f"{frame.timestamp:7.1f}s: {describe(faces)}")
                next_line = frame.timestamp + 1.0
            if display or save:
                with timer("draw"):
                    annotated = draw(frame.image.copy(), faces, fps)
                outputs.annotated(frame, annotated)
                if display and _show(annotated, wait_for_key=independent and len(source.paths) == 1):
                    break
            timer.samples["frame"].append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            fps = frames / elapsed if elapsed > 0 else 0.0
    except KeyboardInterrupt:
        interrupted = True
    finally:
        outputs.close()
        source.close()
        if display:
            cv2.destroyAllWindows()
    elapsed = time.perf_counter() - start
    return {
        "frames": frames, "faces": faces_total, "corrupt_frames": len(corrupt), "corrupt": corrupt, "labels": labels,
        "seconds": elapsed, "fps": frames / elapsed if elapsed > 0 else 0.0, "interrupted": interrupted,
        "source_lost": bool(getattr(source, "lost", False)), "stages": timer.summary(),
    }  # fmt: skip


def _show(image: np.ndarray, wait_for_key: bool) -> bool:
    """Show the frame in the window; True when the user asked to quit (q or Esc)."""
    cv2.imshow("fer-run (q to quit)", image)
    return cv2.waitKey(0 if wait_for_key else 1) & 0xFF in (ord("q"), 27)


def _save_image(image: np.ndarray, save: str, name: str, many: bool) -> None:
    """An annotated photo in the format of its extension: ``save`` itself, or ``save/<name>`` for a folder of images."""
    target = Path(save) / name if many else Path(save)
    if many:
        target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise SourceError(f"cannot write image {target}: use a file name ending in .png or .jpg")
