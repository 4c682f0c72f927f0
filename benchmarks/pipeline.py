"""End-to-end fer-run on a video: frames per second with the defaults, and how well the faces it follows
between detections match detection on every frame (recall, box IoU), per stage p50."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fer_runtime.data import DataError
from fer_runtime.engine import DEFAULT_DETECT_EVERY, FaceEngine
from fer_runtime.pipeline import run_pipeline
from fer_runtime.providers import ProviderChoice
from fer_runtime.sources import SourceError, open_source
from fer_runtime.track import iou

MATCH_IOU = 0.5


def _run(model: Path, video: str, detect_every: int, provider: ProviderChoice | str = "cpu") -> tuple[dict, list[list[tuple]]]:
    try:
        source = open_source(source=video)
    except SourceError as exc:
        raise DataError(str(exc)) from None
    engine = FaceEngine(model, detect_every=detect_every, provider=provider)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "faces.jsonl"
        stats = run_pipeline(engine, source, json_path=str(out))
        boxes = [[tuple(f["box"]) for f in json.loads(line)["faces"]] for line in out.read_text().splitlines()]
    return stats, boxes


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


def pipeline_report(model: Path, video: str, provider: ProviderChoice | str = "cpu") -> dict:
    """The defaults against detection on every frame, one after the other on the same video."""
    every_stats, every_boxes = _run(model, video, 1, provider)
    stats, boxes = _run(model, video, DEFAULT_DETECT_EVERY, provider)
    return {
        "fps": stats["fps"], "frames": stats["frames"], "faces": stats["faces"],
        "settings": {"detector": "haar", "detect_width": 320, "detect_every": DEFAULT_DETECT_EVERY, "flags": "defaults"},
        "stage_p50_ms": {k: v["p50_ms"] for k, v in stats["stages"].items()},
        "every_frame_detection": {"fps": every_stats["fps"], "faces": every_stats["faces"],
                                  "stage_p50_ms": {k: v["p50_ms"] for k, v in every_stats["stages"].items()}},
        "against_every_frame_detection": compare_boxes(every_boxes, boxes),
    }
