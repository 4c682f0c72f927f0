"""The frame loop with the stream's helper threads kept off its core (fer-run's default) and spread over every core
(``FER_HELPER_CORES=all``): frames per second, frame p50 / p95, the wait for a decoded frame (capture p95), detection
time, recall against detection on every frame, at full speed. Each setting runs in processes of its own, alternating
and in turn first, as OpenCV and the thread affinities are per process.

python -m benchmarks.scripts.helper_cores OUT_DIR [--rounds 3]   (results.json + report.md)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench import machine_info
from fer_runtime.cores import OPT_OUT

CLIPS = ["benchmarks/results/moving_face.mp4", "benchmarks/results/two_faces.mp4"]
SETTINGS = {"kept off the frame loop's core": None, "on every core": "all"}


def one_process() -> list[dict]:
    """Run in a child: each clip once with the defaults, against detection on every frame."""
    from benchmarks.pipeline import _run, _summary
    from fer_runtime.engine import DEFAULT_DETECT_EVERY

    model, rows = Path("models/ferplus.int8.onnx"), []
    for clip in CLIPS:
        _, every = _run(model, clip, 1)
        stats, boxes = _run(model, clip, DEFAULT_DETECT_EVERY)
        s = _summary(stats, every, boxes)
        rows.append({"clip": Path(clip).stem, "fps": s["fps"], "frame_p50_ms": s["stage_p50_ms"]["frame"],
                     "frame_p95_ms": s["stage_p95_ms"]["frame"], "capture_p95_ms": s["stage_p95_ms"]["capture"],
                     "detection_p50_ms": s["stage_p50_ms"]["background"],
                     "recall": s["against_every_frame_detection"]["recall"]})
    return rows


def main(out_dir: str, rounds: int) -> None:
    runs = []
    for r in range(rounds):
        for name, value in list(SETTINGS.items())[:: 1 if r % 2 == 0 else -1]:
            env = {k: v for k, v in os.environ.items() if k != OPT_OUT} | ({OPT_OUT: value} if value else {})
            child = subprocess.run([sys.executable, "-m", "benchmarks.scripts.helper_cores", "--child"], env=env,
                                   capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"the {name} run failed:\n{child.stderr}")
            for row in json.loads(child.stdout.splitlines()[-1]):
                runs.append({"setting": name, "round": r + 1, **row})
                print(f"round {r + 1} {name}: {row['clip']} {row['fps']:.0f} FPS, frame p95/p50 "
                      f"{row['frame_p95_ms'] / row['frame_p50_ms']:.2f}", flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(1)
    machine = f"{info['cpu']}, {info['cores']} cores ({', '.join(info['cpu_features'])})"
    command = f"python -m benchmarks.scripts.helper_cores {out_dir} --rounds {rounds}"
    (out / "results.json").write_text(json.dumps({"command": command, "date": time.strftime("%Y-%m-%d"),
                                                  "machine": machine, "runs": runs}, indent=2))
    lines = ["# Helper threads kept off the frame loop's core, or on every core", "", f"`{command}`, "
             f"{time.strftime('%Y-%m-%d')}, {machine}; medians over {rounds} processes per setting (ranges).", "",
             "| clip | setting | FPS | frame p50 / p95 ms | frame p95 / p50 | capture p95 ms | detection p50 ms | recall |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for clip in [Path(c).stem for c in CLIPS]:
        for name in SETTINGS:
            rows = [x for x in runs if x["clip"] == clip and x["setting"] == name]

            def cell(f, d: int, rows=rows) -> str:
                values = [f(x) for x in rows]
                return f"{statistics.median(values):.{d}f} ({min(values):.{d}f}-{max(values):.{d}f})"

            lines.append(f"| {clip} | {name} | {cell(lambda x: x['fps'], 0)} | "
                         f"{cell(lambda x: x['frame_p50_ms'], 2)} / {cell(lambda x: x['frame_p95_ms'], 2)} | "
                         f"{cell(lambda x: x['frame_p95_ms'] / x['frame_p50_ms'], 2)} | "
                         f"{cell(lambda x: x['capture_p95_ms'], 2)} | "
                         f"{cell(lambda x: x['detection_p50_ms'], 1)} | {cell(lambda x: x['recall'], 3)} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'results.json'}, {out / 'report.md'}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(one_process()))
    elif len(sys.argv) == 2 or (len(sys.argv) == 4 and sys.argv[2] == "--rounds" and sys.argv[3].isdigit()
                                and int(sys.argv[3]) >= 1):
        main(sys.argv[1], int(sys.argv[3]) if len(sys.argv) == 4 else 3)
    else:
        sys.exit(__doc__)
