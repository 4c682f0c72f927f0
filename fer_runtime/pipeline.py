"""The frame loop behind fer-run (and fer-bench --pipeline): source in, faces classified, outputs written."""

from __future__ import annotations

import contextlib
import errno
import json
import time
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.engine import FaceEngine, FaceResult
from fer_runtime.errors import signals_deferred, write_error
from fer_runtime.outputs import PendingFile, atomic_path
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
    """What a run writes: JSONL records, an annotated video or annotated images. Closed however the run ends.

    The JSONL is written as the run goes (it can be followed live); the video goes to a temporary name and becomes
    ``save`` only once it has been finalised and reads back whole. A write that fails (a full disk) removes what the
    run wrote and raises ``OutputError``: no output is left half-written under its name. The paths were checked
    (fer-run's cli): each is new, or a file the user let the run replace.
    """

    def __init__(self, source, save: str | None, json_path: str | None):
        self.source, self.save, self.json_path = source, save, json_path
        self.independent = bool(getattr(source, "independent", False))
        self.folder = self.independent and getattr(source, "root", None) is not None  # a folder of images: one
        self.images: list[Path] = []  # annotated images written
        self.made: list[Path] = []  # folders this run made for them
        self.jsonl = open(json_path, "w") if json_path else None  # noqa: SIM115 - closed in close()
        self.writer = None
        self.video: PendingFile | None = None  # the video, under its temporary name until it is whole
        self.video_frames = 0
        self.video_size: tuple[int, int] | None = None  # (width, height) of the first frame, which every frame keeps
        self.written: list[str] = []  # outputs that exist, whole, at the end

    def record(self, frame, faces: list[FaceResult], classes) -> None:
        if self.jsonl:
            record = {"frame": frame.index}
            if frame.timestamp is not None:  # photos have no time: their records name the file instead
                record["timestamp"] = round(frame.timestamp, 4)
            record["faces"] = [f.scaled(frame.scale).to_dict(classes) for f in faces]  # in the file's own pixels
            if frame.name:
                record["file"] = frame.name
            self.jsonl.write(json.dumps(record) + "\n")

    def annotated(self, frame, image: np.ndarray) -> None:
        if not self.save:
            return
        if self.independent:
            if self.folder:
                parent = (Path(self.save) / frame.name).parent
                self.made += [d for d in (parent, *parent.parents) if not d.exists()]
            self.images.append(_save_image(image, self.save, frame.name, self.folder))
            if self.save not in self.written:
                self.written.append(self.save)
            return
        if self.writer is None:
            h, w = image.shape[:2]
            self.video = PendingFile(self.save)
            self.writer = open_video_writer(self.video.tmp, self.source.fps or 25.0, (w, h))
            self.video_size = (w, h)
            if not self.writer.isOpened():
                raise SourceError(f"cannot write video {self.save}")
        if image.shape[1::-1] != self.video_size:  # a stream that came back at another size: the writer drops those
            image = cv2.resize(image, self.video_size, interpolation=cv2.INTER_AREA)
        self.writer.write(image)
        self.video_frames += 1

    def close(self) -> None:
        """Finalise every output; raises OutputError (after removing them) when one could not be written whole."""
        try:
            if self.writer is not None:
                self.writer.release()
                self.writer = None
                if not _video_is_whole(self.video.tmp, self.video_frames):
                    raise OSError(errno.ENOSPC, "the video did not finalise (is the disk full?)", self.save)
                self.video.commit()
                self.written.append(self.save)
            if self.jsonl:
                self.jsonl.close()
                self.written.append(self.json_path)
        except OSError as exc:
            self.abort()
            raise write_error(exc, exc.filename or self.json_path) from None

    def abort(self) -> None:
        """A write failed, or the run read nothing: close and remove what it wrote, whatever state it is in."""
        if self.writer is not None:
            self.writer.release()
        if self.jsonl is not None:
            try:
                self.jsonl.close()
            except OSError:
                pass  # the buffered rest cannot be written either; the file goes
            Path(self.json_path).unlink(missing_ok=True)
        self.jsonl = self.writer = None
        if self.video is not None:
            self.video.discard()
        for image in self.images:
            image.unlink(missing_ok=True)
        for folder in sorted(set(self.made), key=lambda d: len(d.parts), reverse=True):  # the deepest first
            with contextlib.suppress(OSError):  # one that holds anything the run did not write stays
                folder.rmdir()
        self.images, self.made, self.written = [], [], []


def open_video_writer(path: Path, fps: float, size: tuple[int, int]):
    return cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)


def _video_is_whole(path: Path, frames: int) -> bool:
    """The finished file opens and holds the frames written: FFmpeg only warns when the disk fills, the file is broken."""
    cap = cv2.VideoCapture(str(path))
    try:
        return cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) >= frames
    finally:
        cap.release()


def run_pipeline(
    engine: FaceEngine,
    source,
    display: bool = False,
    save: str | None = None,
    json_path: str | None = None,
    max_frames: int | None = None,
    echo=None,
    crops: bool = False,
) -> dict:
    """Process every frame the source yields; outputs are flushed even on Ctrl-C or SIGTERM.

    Image sources are classified one file at a time (``engine.process_image``), video and cameras as a stream
    with tracking and smoothing (``engine.process_frame``). ``echo`` gets one readable line per image, or per
    second of video.
    """
    outputs = RunOutputs(source, save, json_path)
    loop = FrameLoop(engine, source, outputs, Window(source) if display else None, echo=echo, crops=crops)
    interrupted = ended = False
    try:
        loop.run(max_frames)
        ended = True
    except KeyboardInterrupt:
        interrupted = ended = True
    except OSError as exc:
        outputs.abort()
        raise write_error(exc) from None
    finally:
        with signals_deferred() as caught:
            try:
                try:
                    loop.frames_read.close()  # the source's reader ends here, under the deferred signals
                finally:
                    if ended and loop.frames:
                        outputs.close()
                    else:  # a run that failed, or read not one frame, leaves nothing
                        outputs.abort()
            finally:
                source.close()
                if loop.window is not None:
                    loop.window.close()
        interrupted = interrupted or bool(caught)
    return loop.stats(interrupted)


def _closable(frames):
    """The source's frames as a generator whose ``close`` also closes the source's own reader, running its ``finally``
    then rather than whenever the reader is collected (a late signal there was a traceback)."""
    yield from frames


class FrameLoop:
    """One run's frames: each classified, echoed, drawn, shown and recorded, and the counts of the run's summary."""

    def __init__(self, engine: FaceEngine, source, outputs: RunOutputs, window: Window | None, *, echo=None,
                 crops: bool = False) -> None:
        self.engine, self.source, self.outputs, self.window, self.echo, self.crops = engine, source, outputs, window, echo, crops
        self.independent = bool(getattr(source, "independent", False))
        self.frames = self.faces = 0
        self.corrupt: list[str] = []
        self.labels: dict[str, int] = {}
        self.start = time.perf_counter()
        self.fps, self.next_line = 0.0, 1.0
        self.frames_read = _closable(iter(source))

    def run(self, max_frames: int | None) -> None:
        it = self.frames_read
        while max_frames is None or self.frames < max_frames:
            with self.engine.timer("capture"):
                frame = next(it, None)
            if frame is None or self.step(frame):
                return

    def step(self, frame) -> bool:
        """One frame through the loop; True when the user closed the window (the run stops)."""
        if frame.image is None or frame.image.size == 0:
            self.corrupt.append(frame.name or f"frame {frame.index}")
            if self.echo and self.independent:
                self.echo(f"{frame.name}: {frame.error or 'unreadable'}, skipped")
            return False
        t0 = time.perf_counter()
        engine = self.engine
        faces = (engine.process_image(frame.image, self.crops) if self.independent
                 else engine.process_frame(frame.image, frame.gray))
        self._count(frame, faces)
        if self.window is not None or self.outputs.save:
            with engine.timer("draw"):
                annotated = draw(frame.image.copy(), faces, None if self.independent else self.fps)
            self.outputs.annotated(frame, annotated)
            if self.window is not None and self.window.show(annotated, frame.timestamp):
                self.outputs.record(frame, faces, engine.classes)
                return True
        # the record last: an interrupt between the outputs leaves a frame unrecorded, never a record without its frame
        self.outputs.record(frame, faces, engine.classes)
        engine.timer.samples["frame"].append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - self.start
        self.fps = self.frames / elapsed if elapsed > 0 else 0.0
        return False

    def _count(self, frame, faces: list[FaceResult]) -> None:
        """The frame and its faces counted, and the readable line: per image, or once a second of video."""
        self.frames += 1
        self.faces += len(faces)
        for f in faces:
            self.labels[f.label] = self.labels.get(f.label, 0) + 1
        if self.echo and self.independent:
            self.echo(f"{frame.name}: {describe(faces)}")
        elif self.echo and frame.timestamp >= self.next_line:
            self.echo(f"{frame.timestamp:7.1f}s: {describe(faces)}")
            self.next_line = frame.timestamp + 1.0

    def stats(self, interrupted: bool) -> dict:
        elapsed = time.perf_counter() - self.start
        source = self.source
        return {
            "frames": self.frames, "faces": self.faces, "corrupt_frames": len(self.corrupt), "corrupt": self.corrupt,
            "labels": self.labels, "unread_frames": int(getattr(source, "unread", 0)), "seconds": elapsed,
            "fps": self.frames / elapsed if elapsed > 0 else 0.0, "interrupted": interrupted,
            "source_lost": bool(getattr(source, "lost", False)), "outages": list(getattr(source, "outages", [])),
            "down_for": source.outage_now() if hasattr(source, "outage_now") else None,  # an outage not over yet
            "stages": self.engine.timer.summary(),
            "written": self.outputs.written,
        }


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


def _save_image(image: np.ndarray, save: str, name: str, folder: bool) -> Path:
    """An annotated photo in the format of its extension: ``save`` itself, or ``save/<name>`` for a folder of images;
    returns where. A PGM holds grey only, so its boxes are drawn in grey.

    Encoded in memory and written by Python, so a full disk is an OSError rather than a silently short file."""
    target = Path(save) / name if folder else Path(save)
    if folder:
        target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() == ".pgm" and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    ok, encoded = cv2.imencode(target.suffix or ".png", image)
    if not ok:
        raise SourceError(f"cannot write image {target}: use a file name ending in .png or .jpg")
    with atomic_path(target) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return target
