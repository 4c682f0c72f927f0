"""End-to-end fer-run on a video: frames per second with the defaults, and how well the faces it follows
between detections match detection on every frame (recall, box IoU, frames until a new face is picked up), per stage
p50 and p95; the same with detection on the frame (``--no-background-detection``, how fer-run ran before) beside it.

Frames go as fast as they are processed (the speed a slower CPU would have at a camera's rate), and then again at the
clip's own frame rate, as a camera gives them: a background detection spans 20 to 45 frames at full speed here, less
than one at 30 FPS (a face coming in is searched for on the frame loop meanwhile, where the frame changed)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import cv2

from fer_runtime.data import DataError
from fer_runtime.detect import DEFAULT_DETECT_WIDTH, create_detector
from fer_runtime.engine import DEFAULT_DETECT_EVERY, DEFAULT_DETECT_PERIOD, FaceEngine
from fer_runtime.pipeline import run_pipeline
from fer_runtime.providers import ProviderChoice
from fer_runtime.sources import PREFETCH_FRAMES, SourceError, VideoSource, open_source
from fer_runtime.track import iou

MATCH_IOU = 0.5
# at the clip's frame rate the defaults are also run with this --detect-period beside them (the other choice)
OTHER_PERIOD = 0.03 if DEFAULT_DETECT_PERIOD == 0 else 0.0


class Paced:
    """A video source whose frames come no faster than its own frame rate, as a camera gives them."""

    independent, lost = False, False

    def __init__(self, source) -> None:
        self.source, self.fps = source, source.fps

    def __iter__(self):
        start = time.perf_counter()
        for frame in self.source:
            time.sleep(max(0.0, start + frame.index / self.fps - time.perf_counter()))
            yield frame

    def close(self) -> None:
        self.source.close()


def _run(model: Path, video: str, detect_every: int, provider: ProviderChoice | str = "cpu",
         background: bool = True, detect_width: int = DEFAULT_DETECT_WIDTH, paced: bool = False,
         period: float = DEFAULT_DETECT_PERIOD) -> tuple[dict, list[list[tuple]]]:
    try:  # before issue 48 (no background detection) the video was decoded on the frame loop too
        source = open_source(source=video, prefetch=PREFETCH_FRAMES if background else 0)
    except SourceError as exc:
        raise DataError(str(exc)) from None
    if not isinstance(source, VideoSource):
        source.close()
        raise DataError(f"--pipeline {video}: not a video file (a photo, a folder or a stream cannot be replayed)")
    engine = FaceEngine(model, create_detector("haar", None, detect_width), detect_every=detect_every, provider=provider)
    if background:
        engine.detect_in_background(period)
    if not background or detect_every == 1:  # detection on the frame: OpenCV at its own thread count
        cv2.setNumThreads(-1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "faces.jsonl"
        cpu = time.process_time()  # all the process's threads
        try:
            stats = run_pipeline(engine, Paced(source) if paced else source, json_path=str(out))
        finally:
            engine.close()
        stats["cpu_seconds"] = time.process_time() - cpu
        records = [json.loads(line)["faces"] for line in out.read_text().splitlines()]
    stats["tracks"] = len({f["track_id"] for faces in records for f in faces})
    return stats, [[tuple(f["box"]) for f in faces] for faces in records]


def compare_boxes(reference: list[list[tuple]], followed: list[list[tuple]]) -> dict:
    """Recall of the reference faces (IoU >= 0.5 with a box of the same frame) and their mean best IoU."""
    total = matched = 0
    ious = []
    for ref, got in zip(reference, followed):
        for box in ref:
            best = max((iou(box, g) for g in got), default=0.0)
            total += 1
            matched += best >= MATCH_IOU
            ious.append(best)
    return {"reference_faces": total, "recall": matched / total if total else 0.0,
            "mean_iou": sum(ious) / len(ious) if ious else 0.0}


def pickup_frames(reference: list[list[tuple]], followed: list[list[tuple]]) -> list[int]:
    """For each face that appears in the reference (a box no box of the frame before overlaps: a face coming in, or
    the first frame's faces), the frames until the followed run has it (IoU >= 0.5), the face followed through the
    reference by its best overlap from frame to frame; a face never picked up counts the frames it was seen."""
    delays = []
    for t, boxes in enumerate(reference):
        for box in boxes:
            if t and any(iou(box, b) >= 0.3 for b in reference[t - 1]):
                continue
            d = 0
            while t + d < len(reference) and max((iou(box, g) for g in followed[t + d]), default=0.0) < MATCH_IOU:
                d += 1
                nxt = max(reference[t + d], key=lambda b, box=box: iou(box, b), default=None) if t + d < len(reference) else None
                if nxt is None or iou(box, nxt) < 0.3:
                    break
                box = nxt
            delays.append(d)
    return delays


def _summary(stats: dict, reference: list[list[tuple]] | None = None, boxes: list[list[tuple]] | None = None) -> dict:
    stages = stats["stages"]
    row = {"fps": stats["fps"], "frames": stats["frames"], "faces": stats["faces"], "tracks": stats["tracks"],
           "labels": stats["labels"], "cores_busy": stats["cpu_seconds"] / stats["seconds"] if stats["seconds"] else 0.0,
           "background_detections": stages.get("background", {}).get("n", 0),
           "stage_p50_ms": {k: v["p50_ms"] for k, v in stages.items()},
           "stage_p95_ms": {k: v["p95_ms"] for k, v in stages.items()}}
    if reference is not None:
        pickups = pickup_frames(reference, boxes)
        row["against_every_frame_detection"] = {**compare_boxes(reference, boxes), "new_faces": len(pickups),
                                                "pickup_frames_max": max(pickups, default=0),
                                                "pickup_frames_mean": sum(pickups) / len(pickups) if pickups else 0.0}
    return row


def pipeline_report(model: Path, video: str, provider: ProviderChoice | str = "cpu") -> dict:
    """The defaults (detection on its own thread) and detection on the frame, against detection on every frame,
    one after the other on the same video."""
    # each against detection on every frame at its own width: how fer-run ran before issue 48 (detection on the
    # frame, 320 pixels wide), then the defaults
    before_every_stats, before_every = _run(model, video, 1, provider, detect_width=320)
    inline_stats, inline_boxes = _run(model, video, DEFAULT_DETECT_EVERY, provider, background=False, detect_width=320)
    every_stats, every_boxes = _run(model, video, 1, provider)
    stats, boxes = _run(model, video, DEFAULT_DETECT_EVERY, provider)
    paced_inline = _run(model, video, DEFAULT_DETECT_EVERY, provider, background=False, detect_width=320, paced=True)
    paced = _run(model, video, DEFAULT_DETECT_EVERY, provider, paced=True)
    paced_other = _run(model, video, DEFAULT_DETECT_EVERY, provider, paced=True, period=OTHER_PERIOD)
    return {
        **_summary(stats, every_boxes, boxes),
        "settings": {"detector": "haar", "detect_width": DEFAULT_DETECT_WIDTH, "detect_every": DEFAULT_DETECT_EVERY,
                     "detect_period_s": DEFAULT_DETECT_PERIOD,
                     "flags": "defaults"},
        "at_clip_rate": _summary(paced[0], every_boxes, paced[1]),
        "at_clip_rate_other_period": {**_summary(paced_other[0], every_boxes, paced_other[1]),
                                      "detect_period_s": OTHER_PERIOD},
        "before_issue_48": {**_summary(inline_stats, before_every, inline_boxes),
                            "settings": {"detect_width": 320, "flags": "--no-background-detection --detect-width 320",
                                         "video": "decoded on the frame loop"},
                            "every_frame_detection": _summary(before_every_stats),
                            "at_clip_rate": _summary(paced_inline[0], before_every, paced_inline[1])},
        "every_frame_detection": _summary(every_stats),
    }
