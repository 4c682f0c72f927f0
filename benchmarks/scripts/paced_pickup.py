"""A clip fed at its own frame rate, as a camera gives frames, through fer-run before issue 48 (detection on the frame,
320 px) and now (the defaults): recall, box IoU and frames to pick up a new face against detection on every frame.
``fer-bench --pipeline`` feeds frames as fast as they are processed, where a background detection spans a dozen frames.

python -m benchmarks.scripts.paced_pickup MODEL CLIP [FPS]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.pipeline import _run, _summary
from fer_runtime.detect import DEFAULT_DETECT_WIDTH, create_detector
from fer_runtime.engine import FaceEngine
from fer_runtime.pipeline import run_pipeline
from fer_runtime.sources import open_source


class Paced:
    """A video source whose frames come no faster than ``fps``."""

    independent, lost = False, False

    def __init__(self, source, fps: float) -> None:
        self.source, self.fps = source, fps

    def __iter__(self):
        start = time.perf_counter()
        for frame in self.source:
            time.sleep(max(0.0, start + frame.index / self.fps - time.perf_counter()))
            yield frame

    def close(self) -> None:
        self.source.close()


def paced_run(model: Path, clip: str, fps: float, width: int, background: bool) -> tuple[dict, list[list[tuple]]]:
    engine = FaceEngine(model, create_detector("haar", None, width))
    if background:
        engine.detect_in_background()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "faces.jsonl"
        try:
            stats = run_pipeline(engine, Paced(open_source(source=clip), fps), json_path=str(out))
        finally:
            engine.close()
        records = [json.loads(line)["faces"] for line in out.read_text().splitlines()]
    stats["tracks"] = len({f["track_id"] for faces in records for f in faces})
    return stats, [[tuple(f["box"]) for f in faces] for faces in records]


if __name__ == "__main__":
    model, clip = Path(sys.argv[1]), sys.argv[2]
    fps = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    runs = (("before (on the frame, 320 px)", 320, False), ("now (defaults)", DEFAULT_DETECT_WIDTH, True))
    for name, width, background in runs:
        _, reference = _run(model, clip, 1, detect_width=width)
        stats, boxes = paced_run(model, clip, fps, width, background)
        a = _summary(stats, reference, boxes)["against_every_frame_detection"]
        print(f"{Path(clip).name} at {fps:g} FPS, {name}: recall {a['recall']:.4f}, box IoU {a['mean_iou']:.3f}, a new face "
              f"picked up within {a['pickup_frames_max']} frames ({a['new_faces']} appearances), {stats['tracks']} tracks, "
              f"labels {stats['labels']}")
