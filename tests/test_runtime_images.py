"""fer-run on photos and face crops: each file on its own, crops without detection, images saved as images."""

from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fer_runtime.cli import DEMO_IMAGE
from fer_runtime.cli import main as run_cli
from fer_runtime.data import discover, load_split
from fer_runtime.session import OnnxModel

CLASSES = ("angry", "happy", "sad")


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    return tiny_model_factory(CLASSES, seed=3)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Labelled photos of a real face (the bundled demo), flipped, shifted and shaded so predictions vary."""
    root = tmp_path_factory.mktemp("photos")
    face = cv2.imread(str(DEMO_IMAGE))
    rng = np.random.default_rng(0)
    for i in range(12):
        img = face if i % 2 else cv2.flip(face, 1)
        img = np.clip(img.astype(np.float32) * rng.uniform(0.6, 1.4) + rng.uniform(-40, 40), 0, 255).astype(np.uint8)
        label = CLASSES[i % 3]
        (root / label).mkdir(exist_ok=True)
        cv2.imwrite(str(root / label / f"p{i:02d}.jpg"), img)
    return root


def _run(*args):
    result = CliRunner().invoke(run_cli, [*map(str, args), "--no-display"])
    return result


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_photos_are_classified_on_their_own_whatever_the_file_order(model, photos, tmp_path):
    files = sorted(photos.rglob("*.jpg"))
    results = {}
    for order in range(3):
        folder = tmp_path / f"order{order}"
        folder.mkdir()
        shuffled = files[:]
        random.Random(order).shuffle(shuffled)
        for rank, f in enumerate(shuffled):  # names decide the order the folder is read in
            (folder / f"{rank:02d}_{f.parent.name}_{f.name}").write_bytes(f.read_bytes())
        out = tmp_path / f"o{order}.jsonl"
        r = _run("--source", folder, "--model", model, "--json", out)
        assert r.exit_code == 0, r.output
        records = _records(out)
        assert len(records) == len(files) and all(len(rec["faces"]) == 1 for rec in records)
        by_photo = {rec["file"].split("_", 2)[2]: rec["faces"][0] for rec in records}
        assert all(face["track_id"] == 0 for face in by_photo.values())  # no track carried from one photo to the next
        results[order] = by_photo
        labels = {rec["file"].split("_", 2)[2]: rec["file"].split("_", 2)[1] for rec in records}
        accuracy = np.mean([by_photo[p]["label"] == labels[p] for p in by_photo])
        results[f"acc{order}"] = accuracy
        assert f"{shuffled[0].parent.name}_{shuffled[0].name}: " in r.output  # one readable line per image
    assert results[0] == results[1] == results[2]
    assert results["acc0"] == results["acc1"] == results["acc2"]
    predicted = {face["label"] for face in results[0].values()}
    assert len(predicted) >= 2  # the photos differ enough for order effects to show, were there any


@pytest.mark.filterwarnings("ignore:no val/ folder")
def test_crops_mode_scores_as_the_bench_does(model, tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "crops"
    for i in range(30):
        label = CLASSES[i % 3]
        (root / "test" / label).mkdir(parents=True, exist_ok=True)
        (root / "train" / label).mkdir(parents=True, exist_ok=True)
        crop = rng.integers(0, 256, (48, 48), dtype=np.uint8)
        cv2.imwrite(str(root / "test" / label / f"c{i:02d}.png"), crop)
        cv2.imwrite(str(root / "train" / label / f"t{i:02d}.png"), crop)
    manifest = discover(root)
    onnx_model = OnnxModel(model)
    test = load_split(manifest, "test", 1, (48, 48))
    bench_pred = onnx_model.predict_pixels(test.images).argmax(1)
    bench_acc = float((bench_pred == test.labels).mean())
    flat = tmp_path / "flat"
    flat.mkdir()
    for rel, label in manifest.splits["test"]:
        (flat / f"{CLASSES[label]}__{rel.split('/')[-1]}").write_bytes((root / rel).read_bytes())
    out = tmp_path / "c.jsonl"
    r = _run("--source", flat, "--model", model, "--crops", "--json", out)
    assert r.exit_code == 0, r.output
    records = _records(out)
    run_acc = float(np.mean([rec["faces"][0]["label"] == rec["file"].split("__")[0] for rec in records]))
    assert len(records) == 30 and run_acc == bench_acc
    assert all(rec["faces"][0]["box"] == [0.0, 0.0, 48.0, 48.0] for rec in records)


def test_save_writes_images_for_images(model, photos, tmp_path):
    one = next(photos.rglob("*.jpg"))
    r = _run("--source", one, "--model", model, "--save", tmp_path / "out.png")
    assert r.exit_code == 0, r.output
    assert cv2.imread(str(tmp_path / "out.png")) is not None and (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"
    folder = photos / "happy"
    r = _run("--source", folder, "--model", model, "--save", tmp_path / "annotated")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "annotated").iterdir()) == sorted(p.name for p in folder.iterdir())
    for bad, message in ((tmp_path / "x.mp4", "an image is saved as an image"),):
        r = _run("--source", one, "--model", model, "--save", bad)
        assert r.exit_code == 2 and message in r.output and not bad.exists()
    r = _run("--source", folder, "--model", model, "--save", tmp_path / "y.png")
    assert r.exit_code == 2 and "give a folder name" in r.output


def test_unreadable_files_in_a_folder_are_named_and_the_run_goes_on(model, photos, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in list(photos.rglob("*.jpg"))[:3]:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    r = _run("--source", folder, "--model", model)
    assert r.exit_code == 0, r.output
    assert "broken.jpg: unreadable, skipped" in r.output
    assert "fer-run: 3 images, 3 faces" in r.output and "1 unreadable images skipped (broken.jpg)" in r.output


def test_no_camera_falls_back_to_the_bundled_demo(model):
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    camera = cv2.VideoCapture(0)
    if camera.isOpened():
        camera.release()
        pytest.skip("this machine has a camera 0")
    r = _run("--model", model)
    assert r.exit_code == 0, r.output
    assert "no camera 0 on this machine; showing the bundled demo photo instead" in r.output
    assert "demo_face.jpg: " in r.output and "fer-run: 1 images, 1 faces" in r.output
    assert DEMO_IMAGE.stat().st_size < 300_000


def _damaged_video(path, frames=30, bad=10):
    """An MJPEG AVI whose frame ``bad`` does not decode: plain OpenCV stops reading there."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    data[starts[bad] : starts[bad] + 2000] = bytes(2000)
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_video_frame_is_counted_and_the_run_goes_on(model, tmp_path):
    video = _damaged_video(tmp_path / "bad.avi")
    out = tmp_path / "v.jsonl"
    r = _run("--source", video, "--model", model, "--json", out)
    assert r.exit_code == 0, r.output
    assert "fer-run: 29 frames" in r.output and "1 unreadable frames skipped (frame 10)" in r.output
    assert [rec["frame"] for rec in _records(out)] == [i for i in range(30) if i != 10]


def test_sigterm_flushes_like_ctrl_c(model, face_video_factory, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    video = face_video_factory(frames=3000, fps=30)
    out, saved = tmp_path / "s.jsonl", tmp_path / "s.mp4"
    code = "from fer_runtime.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "--source", str(video), "--model", str(model), "--no-display",
                             "--json", str(out), "--save", str(saved)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 20):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "(interrupted)" in stdout
    records = _records(out)  # every line is whole JSON
    assert 20 <= len(records) < 3000
    cap = cv2.VideoCapture(str(saved))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) >= 20  # a finalised, playable mp4


def test_input_faults_share_one_error_format(model, tmp_path, monkeypatch):
    one = DEMO_IMAGE
    bad_yunet = tmp_path / "yunet.onnx"
    bad_yunet.write_bytes(b"not a model")
    junk_tflite = tmp_path / "junk.tflite"
    junk_tflite.write_bytes(b"TFL3" * 40)
    cases = [
        (["--source", one, "--detector", "yunet", "--detector-model", bad_yunet], "is not a YuNet model OpenCV can load"),
        (["--source", one, "--detector-model", bad_yunet], "give --detector yunet with it"),  # not silently unused
        (["--source", one, "--detector", "yunet", "--detector-model", model], "is not a YuNet model"),  # ONNX, not YuNet
        (["--source", one, "--model", junk_tflite], "is not a readable TFLite model"),
        (["--source", "rtsp://127.0.0.1:9/none"], "cannot open stream rtsp://127.0.0.1:9/none: check the URL"),
        (["--demo", "--source", one], "--demo runs on the bundled photo"),
        (["--source", tmp_path / "clip.mp4", "--crops"], "source not found"),
    ]
    for args, message in cases:
        r = _run(*args) if "--model" in args else _run(*args, "--model", model)
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and lines[-1].startswith("fer-run: error: ") and message in lines[-1], (args, r.output)
        if "rtsp" in message:
            assert "camera" not in lines[-1]  # a stream gets stream advice, not camera advice
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    r = CliRunner().invoke(run_cli, ["--source", str(one), "--model", str(model), "--display"])
    assert r.exit_code == 2 and r.output.startswith("fer-run: error: no window possible")


def test_a_folder_of_class_subfolders_is_searched_and_named_by_relative_path(model, photos, tmp_path):
    (photos / ".hidden").mkdir(exist_ok=True)
    (photos / ".hidden" / "x.jpg").write_bytes(next(photos.rglob("*.jpg")).read_bytes())
    out = tmp_path / "tree.jsonl"
    r = _run("--source", photos, "--model", model, "--crops", "--json", out)
    assert r.exit_code == 0, r.output
    records = _records(out)
    expected = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg") if ".hidden" not in p.parts)
    assert [rec["file"] for rec in records] == expected and len(expected) == 12
    assert "happy/p01.jpg: " in r.output
    assert all("timestamp" not in rec for rec in records)  # a photo has no time; its record names the file


def test_saved_stills_carry_no_fps_counter(model, tmp_path):
    import fer_runtime.pipeline as pipeline

    drawn = []
    real = pipeline.draw

    def spy(frame, faces, fps=None):
        drawn.append(fps)
        return real(frame, faces, fps)

    pipeline.draw = spy
    try:
        r = _run("--source", DEMO_IMAGE, "--model", model, "--save", tmp_path / "one.png")
    finally:
        pipeline.draw = real
    assert r.exit_code == 0, r.output
    assert drawn == [None]
    saved = cv2.imread(str(tmp_path / "one.png"))
    b, g, red = (saved[:30, :120, i].astype(int) for i in range(3))
    assert not ((red > 180) & (g > 180) & (b < 90)).any()  # no yellow counter in the corner


def test_a_missing_camera_is_fer_runs_one_line_without_opencvs(model):
    import subprocess
    import sys

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    camera = cv2.VideoCapture(7)
    if camera.isOpened():
        camera.release()
        pytest.skip("this machine has a camera 7")
    proc = subprocess.run([sys.executable, "-c", "from fer_runtime.cli import main; main()", "--camera", "7", "--model",
                           str(model), "--no-display"], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("fer-run: error: cannot open camera 7"), proc.stderr


@pytest.mark.parametrize("command", ["fer_runtime.cli", "benchmarks.bench"])
def test_version(command):
    import subprocess
    import sys

    from fer_runtime import version

    proc = subprocess.run([sys.executable, "-c", f"from {command} import main; main()", "--version"], capture_output=True,
                          text=True, timeout=60)
    name = "fer-run" if command == "fer_runtime.cli" else "fer-bench"
    assert proc.returncode == 0 and proc.stdout == f"{name} {version()}\n", proc


def test_console_lines_list_faces_from_left_to_right():
    from fer_runtime.engine import FaceResult
    from fer_runtime.pipeline import describe

    def face(x, label):
        return FaceResult((x, 10.0, 50.0, 50.0), 0, label, 0.9, np.ones(3), label, np.ones(3))

    assert describe([face(300.0, "sad"), face(20.0, "happy"), face(150.0, "angry")]) == "happy 0.90, angry 0.90, sad 0.90"


def test_ck_plus_class_folders_give_one_record_per_image(tmp_path):
    from .conftest import SHARED

    ckplus = SHARED / "data" / "ckplus"
    if not ckplus.is_dir():
        pytest.skip("needs ../shared/data/ckplus")
    from fer_runtime.sources import folder_images

    out = tmp_path / "ck.jsonl"
    r = CliRunner().invoke(run_cli, ["--source", str(ckplus), "--crops", "--json", str(out), "--no-display"])
    assert r.exit_code == 0, r.output
    records = _records(out)
    files = folder_images(ckplus)
    assert len(records) == len(files) == 981  # CK+'s 981 images in seven class folders
    assert {rec["file"].split("/")[0] for rec in records} == {p.name for p in ckplus.iterdir() if p.is_dir()}
