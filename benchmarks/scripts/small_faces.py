"""The smallest face found, and what finding it costs: the astronaut's face (its Haar box scaled to S pixels wide) in
a 640x480 frame, S from 24 to 96, as a photo (``process_image``) and as a still video (background detection, one face
and no other; found within one detection period?) at several detection widths.

python -m benchmarks.scripts.small_faces OUT_DIR   (results.json + report.md)
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.scripts.make_video import astronaut_bgr
from fer_runtime.detect import HaarDetector
from fer_runtime.engine import DEFAULT_DETECT_EVERY, PHOTO_DETECT_WIDTH, FaceEngine

SIZES = list(range(24, 100, 4))


def face_box_crop() -> np.ndarray:
    """The astronaut's face exactly as full-size Haar frames it."""
    image = astronaut_bgr()
    x, y, w, h = (int(v) for v in max(HaarDetector().detect(image, image.shape[1]), key=lambda d: d.box[2]).box)
    return image[y : y + h, x : x + w]


def frame_with_face(face: np.ndarray, side: int, seed: int = 0) -> np.ndarray:
    canvas = np.full((480, 640, 3), 90, np.uint8)
    canvas[200 : 200 + side, 300 : 300 + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    return np.clip(canvas + np.random.default_rng(seed).normal(0, 4, canvas.shape), 0, 255).astype(np.uint8)


def smallest(found: dict[int, bool]) -> int | None:
    """The smallest size from which every larger one is found too."""
    sizes = sorted(found)
    ok = [s for i, s in enumerate(sizes) if all(found[t] for t in sizes[i:])]
    return ok[0] if ok else None


def detect_ms(width: int, frame: np.ndarray, calls: int = 30) -> float:
    detector = HaarDetector(width)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        detector(frame)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def video_found(face: np.ndarray, side: int, width: int) -> bool:
    """Found on some frame within one detection period (the first DEFAULT_DETECT_EVERY + 1 frames)?"""
    engine = FaceEngine(None, HaarDetector(width)).detect_in_background()
    try:
        for i in range(DEFAULT_DETECT_EVERY + 1):
            if engine.process_frame(frame_with_face(face, side, seed=i)):
                return True
            time.sleep(0.01)  # a camera's frames come apart: the background detection gets its time
        return False
    finally:
        engine.close()


def main(out_dir: Path) -> dict:
    face = face_box_crop()
    engine = FaceEngine(None)
    photo = {s: bool(engine.process_image(frame_with_face(face, s))) for s in SIZES}
    blank = frame_with_face(face, 200)
    report = {"machine": f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
              "opencv": cv2.__version__, "photo_detect_width": PHOTO_DETECT_WIDTH,
              "photo": {"smallest_px": smallest(photo), "found": photo}, "video": {}}
    for width in (320, 400, 480, 640):
        found = {s: video_found(face, s, width) for s in SIZES}
        report["video"][width] = {"smallest_px": smallest(found), "detect_ms_p50": detect_ms(width, blank), "found": found}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=1))
    lines = [f"# Smallest face found (640x480, {report['machine']}, OpenCV {report['opencv']})", "",
             f"- photo (searched {PHOTO_DETECT_WIDTH} px wide): {report['photo']['smallest_px']} px", "",
             "| video detection width | smallest face found within one detection period | full detection p50 ms |",
             "|---:|---:|---:|"]
    lines += [f"| {w} | {v['smallest_px']} px | {v['detect_ms_p50']:.1f} |" for w, v in report["video"].items()]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    print((lambda r: json.dumps({k: v for k, v in r.items() if k != "video"} | {
        "video": {w: (v["smallest_px"], round(v["detect_ms_p50"], 1)) for w, v in r["video"].items()}}, indent=1))(
        main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/small_faces"))))
