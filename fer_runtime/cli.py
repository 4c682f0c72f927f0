"""fer-run: live facial expression recognition from a camera, video, image, folder or stream."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click
import cv2
import numpy as np

from fer_runtime.classifier import FaceExpressionClassifier, FaceResult
from fer_runtime.contract import ContractError
from fer_runtime.detect import DetectorError
from fer_runtime.outputs import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, FerCommand, OutputError, check_output_file
from fer_runtime.sources import SourceError, open_source


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def gui_available() -> bool:
    """False for the headless OpenCV wheel or when there is no display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    info = cv2.getBuildInformation()
    gui = [line for line in info.splitlines() if line.strip().startswith("GUI:")]
    return bool(gui) and "NONE" not in gui[0].upper()


def draw(frame: np.ndarray, faces: list[FaceResult], fps: float) -> np.ndarray:
    out = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    for f in faces:
        x, y, w, h = (int(round(v)) for v in f.box)
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 200, 0), 2)
        text = f"#{f.track_id} {f.label} {f.confidence:.2f}"
        cv2.putText(out, text, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 200, 0), 1, cv2.LINE_AA)
    cv2.putText(out, f"{fps:.1f} FPS", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 1, cv2.LINE_AA)
    return out


def run_pipeline(
    clf: FaceExpressionClassifier,
    source,
    display: bool = False,
    save: str | None = None,
    json_path: str | None = None,
    max_frames: int | None = None,
    echo=print,
) -> dict:
    """Process every frame the source yields; outputs are flushed even on Ctrl-C."""
    writer = None
    jsonl = open(json_path, "w") if json_path else None  # noqa: SIM115 - closed in finally
    frames = faces_total = corrupt = 0
    start = time.perf_counter()
    fps = 0.0
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
                corrupt += 1
                continue
            t0 = time.perf_counter()
            faces = clf.process_frame(frame.image)
            frames += 1
            faces_total += len(faces)
            if jsonl:
                record = {"frame": frame.index, "timestamp": round(frame.timestamp, 4),
                          "faces": [f.to_dict(clf.classes) for f in faces]}  # fmt: skip
                if frame.name:
                    record["name"] = frame.name
                jsonl.write(json.dumps(record) + "\n")
            if display or save:
                with timer("draw"):
                    annotated = draw(frame.image.copy(), faces, fps)
                if save:
                    if writer is None:
                        h, w = annotated.shape[:2]
                        writer = cv2.VideoWriter(save, cv2.VideoWriter_fourcc(*"mp4v"), source.fps or 25.0, (w, h))
                        if not writer.isOpened():
                            raise SourceError(f"cannot write video {save}")
                    writer.write(annotated)
                if display:
                    cv2.imshow("fer-run (q to quit)", annotated)
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        break
            timer.samples["frame"].append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            fps = frames / elapsed if elapsed > 0 else 0.0
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if writer is not None:
            writer.release()
        if jsonl:
            jsonl.close()
        source.close()
        if display:
            cv2.destroyAllWindows()
    elapsed = time.perf_counter() - start
    return {
        "frames": frames, "faces": faces_total, "corrupt_frames": corrupt, "seconds": elapsed,
        "fps": frames / elapsed if elapsed > 0 else 0.0, "interrupted": interrupted,
        "source_lost": bool(getattr(source, "lost", False)), "stages": timer.summary(),
    }  # fmt: skip


@click.command("fer-run", cls=FerCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--camera", type=click.IntRange(min=0), default=None, help="camera index (e.g. 0)")
@click.option("--source", default=None, help="video file, image, folder of images, or stream URL")
@click.option("--model", "model_path", default=None, help="shipped model (ferplus, fer2013) or an ONNX file (default: ferplus)")
@click.option("--detector", type=click.Choice(["haar", "yunet"]), default="haar", show_default=True)
@click.option("--detector-model", default=None, help="YuNet .onnx file for --detector yunet")
@click.option("--detect-width", type=click.IntRange(min=32), default=320, show_default=True,
              help="detect on a frame this wide")
@click.option("--detect-every", type=click.IntRange(min=1), default=1, show_default=True,
              help="detect every k-th frame, track between")
@click.option("--smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.7, show_default=True,
              help="EMA weight of past probabilities (0 off)")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="ONNX Runtime threads (0: all cores)")
@click.option("--display/--no-display", default=None, help="show a window (default: when a display exists)")
@click.option("--save", default=None, help="write an annotated video, e.g. out.mp4")
@click.option("--json", "json_path", default=None, help="write one JSON record per frame (JSONL)")
@click.option("--max-frames", type=click.IntRange(min=1), default=None)
@click.option("--profile", is_flag=True, help="print per-stage latency p50/p95 and FPS at the end")
def main(camera, source, model_path, detector, detector_model, detect_width, detect_every, smoothing, threads,
         display, save, json_path, max_frames, profile):  # fmt: skip
    """Real-time facial expression recognition (ONNX Runtime + OpenCV)."""
    if camera is None and source is None:
        camera = 0
    can_show = gui_available()
    if display is None:
        display = can_show
    elif display and not can_show:
        raise click.UsageError(
            "no window possible: no display, or the headless OpenCV wheel is installed "
            "(pip uninstall opencv-python-headless && pip install 'opencv-python<5'); use --no-display with --save/--json"
        )
    try:
        if json_path:
            check_output_file(json_path, "--json")
        if save:
            check_output_file(save, "--save")
        clf = FaceExpressionClassifier(model_path, detector, detector_model, detect_width, detect_every, smoothing, threads)
        src = open_source(camera, source)
    except (ContractError, DetectorError, SourceError, OutputError, ValueError) as exc:
        click.echo(f"fer-run: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    # SIGTERM ends the run like Ctrl-C: the video is finalised and the JSONL complete
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        stats = run_pipeline(clf, src, display, save, json_path, max_frames)
    except SourceError as exc:
        click.echo(f"fer-run: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo(
        f"fer-run: {stats['frames']} frames, {stats['faces']} faces, {stats['corrupt_frames']} corrupt frames skipped, "
        f"{stats['fps']:.1f} FPS" + (" (interrupted)" if stats["interrupted"] else "")
        + (" (source lost after retries)" if stats["source_lost"] else "")
    )
    if profile:
        for stage, p in stats["stages"].items():
            click.echo(f"  {stage:<10} p50 {p['p50_ms']:.3f} ms  p95 {p['p95_ms']:.3f} ms  (n={p['n']})")
    outputs = [p for p in (save, json_path) if p]
    if outputs:
        click.echo("fer-run: wrote " + ", ".join(str(Path(p)) for p in outputs))
    if stats["interrupted"]:
        sys.exit(EXIT_INTERRUPTED)
    if stats["source_lost"]:
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
