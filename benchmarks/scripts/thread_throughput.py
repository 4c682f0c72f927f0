"""Photos per second of one shared ``FaceExpressionRecognizer`` called from one thread and from two at once.

\b
    python -m benchmarks.scripts.thread_throughput --out-dir benchmarks/results/threads

The astronaut photo (scikit-image, 512x512) and its mirror image, alternately, through ``analyze``: serial and two
threads in alternating rounds (so load drifts hit both alike), the ratio taken per round and its median reported.
Measured with OpenCV at its default thread count and at one thread (``cv2.setNumThreads(1)``, what fer-serve sets):
OpenCV's Haar cascade splits one photo over both cores by itself, so at its default a lone caller already keeps two
cores busy and a second caller has little left to add. CPU seconds per photo (process time over photos) show whether
threads add work. Writes results.json and report.md.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import click
import cv2
import numpy as np

from benchmarks.bench import machine_info
from benchmarks.scripts.make_video import astronaut_bgr
from fer_runtime import FaceExpressionRecognizer
from fer_runtime.outputs import atomic_write_text, check_output_dir


def photos_per_second(fer: FaceExpressionRecognizer, images: list[np.ndarray], workers: int, calls: int) -> tuple[float, float]:
    """(photos per second, CPU milliseconds per photo) of ``calls`` analyze calls spread over ``workers`` threads."""
    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: fer.analyze(images[i % len(images)]), range(calls)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return calls / wall, cpu / calls * 1000


def measure(fer: FaceExpressionRecognizer, images: list[np.ndarray], cv_threads: int | None, rounds: int,
            calls: int) -> dict:
    """Serial and 2-thread rounds, alternating, at one OpenCV thread setting (None: OpenCV's default)."""
    default = cv2.getNumThreads()
    cv2.setNumThreads(default if cv_threads is None else cv_threads)
    try:
        photos_per_second(fer, images, 2, calls // 4)  # warm-up: each thread's detector is made on its first call
        rows = []
        for _ in range(rounds):
            serial, serial_cpu = photos_per_second(fer, images, 1, calls)
            two, two_cpu = photos_per_second(fer, images, 2, calls)
            rows.append({"serial_per_s": serial, "two_threads_per_s": two, "ratio": two / serial,
                         "serial_cpu_ms": serial_cpu, "two_threads_cpu_ms": two_cpu})
    finally:
        cv2.setNumThreads(default)
    median = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    return {"opencv_threads": cv2.getNumThreads() if cv_threads is None else cv_threads, "rounds": rows, "median": median}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Photos per second from one thread and from two",
        "",
        f"`{results['command']}`, {results['date']}, {m['cpu']} ({m['cores']} cores), onnxruntime {m['onnxruntime']}, "
        f"OpenCV {results['opencv']}, load average {results['load_before']:.2f} before and {results['load_after']:.2f} "
        f"after. {results['calls']} `analyze` calls per round on the astronaut photo and its mirror (512x512), "
        f"{results['rounds_per_setting']} rounds; medians over rounds.",
        "",
        "| OpenCV threads | serial photos/s | 2 threads photos/s | ratio | CPU ms/photo serial | CPU ms/photo 2 threads "
        "| cores used serial | cores used 2 threads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in results["settings"]:
        d = s["median"]
        lines.append(f"| {s['opencv_threads']} | {d['serial_per_s']:.1f} | {d['two_threads_per_s']:.1f} | "
                     f"{d['ratio']:.2f} | {d['serial_cpu_ms']:.1f} | {d['two_threads_cpu_ms']:.1f} | "
                     f"{d['serial_per_s'] * d['serial_cpu_ms'] / 1000:.2f} | "
                     f"{d['two_threads_per_s'] * d['two_threads_cpu_ms'] / 1000:.2f} |")
    lines += ["", "Cores used: photos/s times CPU seconds per photo, what the machine gave this process. Two threads can "
              "only outrun one where a second core is free: on a machine shared with other jobs the ratio is capped "
              "by it."]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="folder for results.json and report.md")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1, 100), help="rounds of each mode")
@click.option("--calls", default=60, show_default=True, type=click.IntRange(4, 10_000), help="photos per round")
def main(out_dir: str, rounds: int, calls: int) -> None:
    out = check_output_dir(out_dir)
    photo = astronaut_bgr()
    images = [photo, np.ascontiguousarray(photo[:, ::-1])]
    fer = FaceExpressionRecognizer()
    load_before = os.getloadavg()[0]
    settings = [measure(fer, images, None, rounds, calls), measure(fer, images, 1, rounds, calls)]
    results = {"command": f"python -m benchmarks.scripts.thread_throughput --out-dir {out_dir} --rounds {rounds} "
                          f"--calls {calls}",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine_info(1),
               "opencv": cv2.__version__, "load_before": load_before, "load_after": os.getloadavg()[0],
               "calls": calls, "rounds_per_setting": rounds, "settings": settings}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "report.md", markdown(results))
    click.echo(markdown(results))


if __name__ == "__main__":
    main()
