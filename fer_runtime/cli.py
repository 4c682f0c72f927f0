"""fer-run: live facial expression recognition from a camera, video, image, folder or stream."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import cv2

from fer_runtime.config import RunConfig
from fer_runtime.data import IMAGE_EXTENSIONS
from fer_runtime.detect import create_detector
from fer_runtime.engine import FaceEngine
from fer_runtime.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, OutputError, signals_deferred, sigterm_as_interrupt
from fer_runtime.options import FerCommand, config_of, config_options
from fer_runtime.outputs import check_output_dir, check_output_file, version_option
from fer_runtime.pipeline import run_pipeline
from fer_runtime.providers import describe as describe_provider
from fer_runtime.sources import DEFAULT_RECONNECT_S, SourceError, open_source

DEMO_IMAGE = Path(__file__).resolve().parent / "assets" / "demo_face.jpg"


def _open(camera: int | None, source: str | None, default_camera: bool, reconnect: float = DEFAULT_RECONNECT_S):
    """The source; with no --camera or --source and no camera here, the bundled demo photo instead."""
    try:
        return open_source(camera, source, reconnect=reconnect)
    except SourceError:
        if not default_camera:
            raise
        click.echo("fer-run: no camera 0 on this machine; showing the bundled demo photo instead (fer-run --demo)")
        return open_source(None, str(DEMO_IMAGE))


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """OpenCV's and FFmpeg's own log lines ("[ WARN:0@0.43] global cap_ffmpeg.cpp ...", "[http @ 0x...] Stream ends
    prematurely") off for the run: what they report (a stream that drops, a disk that fills, a camera that is not
    there) fer-run says once, in its own words. FFmpeg reads its level when OpenCV first opens a video."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    logging = cv2.utils.logging
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(level)


MAX_LISTED = 5  # outages named one by one in the summary
OPENCV_WHEELS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def opencv_clash() -> str | None:
    """A line when more than one OpenCV wheel is installed: they all install the one cv2 module, the last one wins."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in OPENCV_WHEELS:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    if len(found) < 2:
        return None
    return (f"fer-run: warning: {len(found)} OpenCV packages share the cv2 module here ({', '.join(found)}); keep one: "
            "pip uninstall -y " + " ".join(OPENCV_WHEELS) + " && pip install 'fer-toolchain[desktop]' (or [headless])")


def summary(stats: dict, images: bool, rate: bool = True) -> str:
    """The last line of a run; ``rate`` False where a window held the photos (the time was the viewer's)."""
    what = "images" if images else "frames"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(stats["labels"].items(), key=lambda kv: -kv[1]))
    line = (f"fer-run: {stats['frames']} {what}, {stats['faces']} faces" + (f" ({counts})" if counts else "")
            + (f", {stats['fps']:.1f} {what}/s" if rate else ""))
    if stats["corrupt"]:
        names = ", ".join(stats["corrupt"][:5]) + (", ..." if len(stats["corrupt"]) > 5 else "")
        line += f"; {len(stats['corrupt'])} unreadable {what} skipped ({names})"
    if stats.get("unread_frames"):
        line += f"; the video ended early: {stats['unread_frames']} more frames it lists could not be read"
    if stats.get("unsupported"):
        names = ", ".join(stats["unsupported"][:5]) + (", ..." if len(stats["unsupported"]) > 5 else "")
        line += f"; {len(stats['unsupported'])} files in a format not read left out ({names}: convert them to PNG)"
    line += _outages(stats.get("outages", []), stats["source_lost"], stats.get("down_for"))
    line += " (interrupted)" if stats["interrupted"] else ""
    return line


def _outages(outages: list[float], lost: bool, down_for: float | None = None) -> str:
    """'; the stream dropped 2 times (5.1 s, 0.8 s) and came back' (the first MAX_LISTED), and when the last one did
    not end: how long it was reopened before the run gave up, or how long it had been down when the run ended."""
    back = outages[:-1] if lost else outages
    text = ""
    if back:
        times = "once" if len(back) == 1 else f"{len(back)} times"
        listed = ", ".join(f"{s:.1f} s" for s in back[:MAX_LISTED])
        more = f", ...; {sum(back):.1f} s in all" if len(back) > MAX_LISTED else ""
        text = f"; the source dropped {times} ({listed}{more}) and came back"
    if lost:
        gone = f" after {outages[-1]:.1f} s of reopening it" if outages else ""
        text += f"; the source was lost{gone} (--reconnect SECONDS to wait longer)"
    elif down_for is not None:
        text += f"; the source had been down for {down_for:.1f} s when the run ended"
    return text


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


def check_new_output(path: str | Path, flag: str, overwrite: bool) -> None:
    """An output file that is not there yet, or one the user lets the run replace (--overwrite); never a device, a
    pipe or anything else that is not a plain file, which a failed run would remove."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_file():
        raise OutputError(f"{flag} {path} exists and is not a plain file: give the name of a new file")
    if not overwrite:
        raise OutputError(f"{flag} {path} exists: give another name, or --overwrite to replace it")


def check_save_target(save: str, source, overwrite: bool = False) -> None:
    """--save: an image file for one image, a folder for a folder of images, a video file otherwise; nothing in the
    way that the run would replace, unless --overwrite."""
    suffix = Path(save).suffix.lower()
    independent = getattr(source, "independent", False)
    if independent and getattr(source, "root", None) is not None:
        if suffix in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS and not Path(save).is_dir():
            raise OutputError(f"--save {save}: a folder of images is saved as a folder of images; give a folder name")
        check_output_dir(save, "--save")
        there = [Path(save) / source.name(p) for p in source.paths]
        there = [t for t in there if t.exists() or t.is_symlink()]
        for target in there:
            check_new_output(target, "--save", True)
        if there and not overwrite:
            raise OutputError(f"--save {save} already holds {len(there)} of the annotated images (e.g. "
                              f"{there[0].relative_to(save)}): give another folder, or --overwrite to replace them")
        return
    if independent and suffix not in IMAGE_EXTENSIONS:
        raise OutputError(f"--save {save}: an image is saved as an image; use a name ending in .png or .jpg")
    if not independent and suffix not in VIDEO_EXTENSIONS:
        raise OutputError(f"--save {save}: a video is saved as a video; use a name ending in .mp4 or .avi")
    check_output_file(save, "--save")
    check_new_output(save, "--save", overwrite)


@click.command("fer-run", cls=FerCommand)
@version_option("fer-run")
@config_options(RunConfig)
def main(**options) -> int:
    """Real-time facial expression recognition (ONNX Runtime + OpenCV)."""
    return run(config_of(RunConfig, options))


def run(cfg: RunConfig) -> int:
    """fer-run with a typed config: outputs checked, the model and source opened, every frame run; the exit code."""
    with quiet_opencv():
        return _run(cfg)


def _run(cfg: RunConfig) -> int:
    if clash := opencv_clash():
        click.echo(clash, err=True)
    camera, source, default_camera = _what_to_read(cfg)
    display = _display(cfg.display)
    check_outputs_apart(source, {"--save": cfg.save, "--json": cfg.json})
    if cfg.json:
        check_output_file(cfg.json, "--json")
        check_new_output(cfg.json, "--json", cfg.overwrite)
    engine = FaceEngine(cfg.model, create_detector(cfg.detector, cfg.detector_model, cfg.detect_width),
                        detect_every=cfg.detect_every, smoothing=cfg.smoothing, threads=cfg.threads, provider=cfg.provider,
                        prior=cfg.prior)
    src = _open(camera, source, default_camera, cfg.reconnect)
    _check_source(src, cfg)
    if cfg.background_detection and not getattr(src, "independent", False):
        engine.detect_in_background(cfg.detect_period)
    if engine.model.provider.request == "auto":
        click.echo(f"fer-run: {describe_provider(engine.model.provider)}", err=True)
    with sigterm_as_interrupt():  # the video is finalised and the JSONL complete
        try:
            stats = run_pipeline(engine, src, display, cfg.save, cfg.json, cfg.max_frames,
                                 echo=None if display else click.echo, crops=cfg.crops)
        finally:
            engine.close()
    # the outputs are final: a further Ctrl-C or SIGTERM only waits for the summary (the exit code says interrupted)
    with signals_deferred() as late:
        code = _report(stats, src, cfg.profile, display)
    return EXIT_INTERRUPTED if late else code


def _what_to_read(cfg: RunConfig) -> tuple[int | None, str | None, bool]:
    """(camera, source, whether camera 0 is only the default): --demo is the bundled photo, nothing given camera 0."""
    if cfg.demo and (cfg.camera is not None or cfg.source is not None):
        raise click.UsageError("--demo runs on the bundled photo: give no --camera or --source with it")
    source = str(DEMO_IMAGE) if cfg.demo else cfg.source
    default_camera = cfg.camera is None and source is None
    return (0 if default_camera else cfg.camera), source, default_camera


def _display(asked: bool | None) -> bool:
    """--display/--no-display, or (neither given) whether a window is possible here."""
    can_show = gui_available()
    if asked and not can_show:
        raise click.UsageError(
            "no window possible: no display, or the headless OpenCV wheel is installed "
            "(pip install 'fer-toolchain[desktop]' in place of [headless]); use --no-display with --save/--json"
        )
    return can_show if asked is None else asked


def _check_source(src, cfg: RunConfig) -> None:
    """--crops only for images, --save in the form the source is saved in; the source closed when they do not fit."""
    try:
        if cfg.crops and not getattr(src, "independent", False):
            raise OutputError("--crops is for images or folders of face crops, not video or cameras")
        if cfg.save:
            check_save_target(cfg.save, src, cfg.overwrite)
    except OutputError:
        src.close()
        raise


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
    if not stats["frames"] and (stats["corrupt"] or stats.get("unread_frames")):
        what = "image" if independent else "frame"
        click.echo(f"fer-run: error: not one {what} of the source could be read", err=True)
        return 2
    return EXIT_INTERNAL if stats["source_lost"] else 0


if __name__ == "__main__":
    main()
