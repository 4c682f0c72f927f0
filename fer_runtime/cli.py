"""fer-run: live facial expression recognition from a camera, video, image, folder or stream."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click
import cv2

from fer_runtime.classifier import DEFAULT_DETECT_EVERY, DEFAULT_THREADS, FaceExpressionClassifier
from fer_runtime.contract import ContractError
from fer_runtime.data import IMAGE_EXTENSIONS
from fer_runtime.detect import DetectorError
from fer_runtime.outputs import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    FerCommand,
    OutputError,
    check_output_dir,
    check_output_file,
    version_option,
)
from fer_runtime.pipeline import run_pipeline
from fer_runtime.providers import PROVIDER_HELP
from fer_runtime.providers import describe as describe_provider
from fer_runtime.session import PRIOR_CHOICES
from fer_runtime.sources import SourceError, open_source

DEMO_IMAGE = Path(__file__).resolve().parent / "assets" / "demo_face.jpg"


def _open(camera: int | None, source: str | None, default_camera: bool):
    """The source; with no --camera or --source and no camera here, the bundled demo photo instead."""
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    # OpenCV's own lines about a missing camera ("[ERROR:0@0.081] ... Camera index out of range") come before and
    # say less than fer-run's one line
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        return open_source(camera, source)
    except SourceError:
        if not default_camera:
            raise
        click.echo("fer-run: no camera 0 on this machine; showing the bundled demo photo instead (fer-run --demo)")
        return open_source(None, str(DEMO_IMAGE))
    finally:
        logging.setLogLevel(level)


def summary(stats: dict, images: bool, rate: bool = True) -> str:
    """The last line of a run; ``rate`` False where a window held the photos (the time was the viewer's)."""
    what = "images" if images else "frames"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(stats["labels"].items(), key=lambda kv: -kv[1]))
    line = (f"fer-run: {stats['frames']} {what}, {stats['faces']} faces" + (f" ({counts})" if counts else "")
            + (f", {stats['fps']:.1f} {what}/s" if rate else ""))  # fmt: skip
    if stats["corrupt"]:
        names = ", ".join(stats["corrupt"][:5]) + (", ..." if len(stats["corrupt"]) > 5 else "")
        line += f"; {len(stats['corrupt'])} unreadable {what} skipped ({names})"
    if stats.get("unread_frames"):
        line += f"; the video ended early: {stats['unread_frames']} more frames it lists could not be read"
    if stats.get("unsupported"):
        names = ", ".join(stats["unsupported"][:5]) + (", ..." if len(stats["unsupported"]) > 5 else "")
        line += f"; {len(stats['unsupported'])} files in a format not read left out ({names}: convert them to PNG)"
    line += " (interrupted)" if stats["interrupted"] else ""
    return line + (" (source lost after retries)" if stats["source_lost"] else "")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def gui_available() -> bool:
    """False for the headless OpenCV wheel or when there is no display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    info = cv2.getBuildInformation()
    gui = [line for line in info.splitlines() if line.strip().startswith("GUI:")]
    return bool(gui) and "NONE" not in gui[0].upper()


VIDEO_EXTENSIONS = {".mp4", ".avi", ".mkv", ".mov"}


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # a hard link
    except OSError:
        return False


def _is_or_inside(output: Path, source: Path) -> bool:
    return _same_file(output, source) or source.resolve() in output.resolve().parents


def check_outputs_apart(source: str | None, outputs: dict[str, str | None]) -> None:
    """No output may be, or be inside, the input, and two outputs may not be one file: each would destroy the other."""
    given = {flag: Path(p) for flag, p in outputs.items() if p}
    if len(given) == 2:
        (flag_a, a), (flag_b, b) = given.items()
        if _same_file(a, b):
            raise OutputError(f"{flag_a} {a} and {flag_b} {b} are the same file: give each output its own name")
    if source is None or "://" in source or not Path(source).exists():
        return
    for flag, path in given.items():
        if _is_or_inside(path, Path(source)):
            where = "is inside" if Path(source).resolve() in path.resolve().parents else "is"
            raise OutputError(f"{flag} {path} {where} the input {source}: write the output somewhere else")


def check_save_target(save: str, source) -> None:
    """--save: an image file for one image, a folder for a folder of images, a video file otherwise."""
    suffix = Path(save).suffix.lower()
    if getattr(source, "independent", False) and len(source.paths) > 1:
        if suffix:
            raise OutputError(f"--save {save}: a folder of images is saved as a folder of images; give a folder name")
        check_output_dir(save, "--save")
        return
    if getattr(source, "independent", False) and suffix not in IMAGE_EXTENSIONS:
        raise OutputError(f"--save {save}: an image is saved as an image; use a name ending in .png or .jpg")
    if not getattr(source, "independent", False) and suffix not in VIDEO_EXTENSIONS:
        raise OutputError(f"--save {save}: a video is saved as a video; use a name ending in .mp4 or .avi")
    check_output_file(save, "--save")


@click.command("fer-run", cls=FerCommand, context_settings={"help_option_names": ["-h", "--help"]})
@version_option("fer-run")
@click.option("--camera", type=click.IntRange(min=0), default=None, help="camera index (e.g. 0)")
@click.option("--source", default=None, help="video file, image, folder of images, or stream URL")
@click.option("--model", "model_path", default=None, help="shipped model (ferplus, fer2013) or an ONNX file (default: ferplus)")
@click.option("--detector", type=click.Choice(["haar", "yunet"]), default="haar", show_default=True)
@click.option("--detector-model", default=None, help="YuNet .onnx file for --detector yunet")
@click.option("--detect-width", type=click.IntRange(min=32), default=320, show_default=True,
              help="detect on a frame this wide")
@click.option("--detect-every", type=click.IntRange(min=1), default=DEFAULT_DETECT_EVERY, show_default=True,
              help="full detection every k-th frame and when a face is lost; faces are followed in between (1: detect "
              "on every frame)")
@click.option("--smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.7, show_default=True,
              help="EMA weight of past probabilities (0 off)")
@click.option("--threads", type=click.IntRange(min=0), default=DEFAULT_THREADS, show_default=True,
              help="ONNX Runtime threads (0: all cores); more than 1 takes CPU from decoding and detection")
@click.option("--prior", type=click.Choice(PRIOR_CHOICES), default="model", show_default=True,
              help="decision rule: the model's own (fitted on validation), the training prior (the raw argmax), or a "
              "balanced prior (every expression equally likely: posed faces, balanced sets)")
@click.option("--provider", default="auto", show_default=True, help=PROVIDER_HELP)
@click.option("--display/--no-display", default=None, help="show a window (default: when a display exists)")
@click.option("--crops", is_flag=True, help="the images are face crops already (e.g. FER2013's 48x48): no detection")
@click.option("--demo", is_flag=True, help="run on the bundled photo (what fer-run does when there is no camera)")
@click.option("--save", default=None,
              help="annotated output: out.mp4 for video or a camera, out.png for an image, a folder for a folder of images")
@click.option("--json", "json_path", default=None, help="write one JSON record per frame (JSONL)")
@click.option("--max-frames", type=click.IntRange(min=1), default=None)
@click.option("--profile", is_flag=True, help="print per-stage latency p50/p95 and FPS at the end")
def main(camera, source, model_path, detector, detector_model, detect_width, detect_every, smoothing, threads, prior,
         provider, crops, demo, display, save, json_path, max_frames, profile):  # fmt: skip
    """Real-time facial expression recognition (ONNX Runtime + OpenCV)."""
    if demo and (camera is not None or source is not None):
        raise click.UsageError("--demo runs on the bundled photo: give no --camera or --source with it")
    source = str(DEMO_IMAGE) if demo else source
    default_camera = camera is None and source is None
    if default_camera:
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
        check_outputs_apart(source, {"--save": save, "--json": json_path})
        if json_path:
            check_output_file(json_path, "--json")
        clf = FaceExpressionClassifier(model_path, detector, detector_model, detect_width, detect_every, smoothing, threads,
                                       prior=prior, provider=provider)  # fmt: skip
        src = _open(camera, source, default_camera)
        if crops and not getattr(src, "independent", False):
            src.close()
            raise OutputError("--crops is for images or folders of face crops, not video or cameras")
        if save:
            check_save_target(save, src)
    except (ContractError, DetectorError, SourceError, OutputError, ValueError) as exc:
        click.echo(f"fer-run: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if clf.model.provider.request == "auto":
        click.echo(f"fer-run: {describe_provider(clf.model.provider)}", err=True)
    # SIGTERM ends the run like Ctrl-C: the video is finalised and the JSONL complete
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        echo = click.echo if not display else None
        stats = run_pipeline(clf, src, display, save, json_path, max_frames, echo=echo, crops=crops)
    except (SourceError, OutputError) as exc:
        click.echo(f"fer-run: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        signal.signal(signal.SIGTERM, previous)
    # the outputs are final: a further Ctrl-C or SIGTERM only waits for the summary (the exit code says interrupted)
    late: list[int] = []
    previous = {signum: signal.signal(signum, lambda s, f: late.append(s)) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = _report(stats, src, profile, display)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    code = EXIT_INTERRUPTED if late else code
    if code:
        sys.exit(code)


def _report(stats: dict, src, profile: bool, display: bool) -> int:
    """The summary, the profile and what was written; the exit code."""
    stats["unsupported"] = getattr(src, "unsupported", [])
    independent = bool(getattr(src, "independent", False))
    click.echo(summary(stats, independent, rate=not (display and independent)))
    if profile:
        for stage, p in stats["stages"].items():
            click.echo(f"  {stage:<10} p50 {p['p50_ms']:.3f} ms  p95 {p['p95_ms']:.3f} ms  (n={p['n']})")
    if stats["written"]:
        click.echo("fer-run: wrote " + ", ".join(str(Path(p)) for p in stats["written"]))
    if stats["interrupted"]:
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL if stats["source_lost"] else 0


if __name__ == "__main__":
    main()
