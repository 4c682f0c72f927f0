"""The camera-shift family: what each shift does to a face, the fer-bench shift report, and training's degradations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fer_runtime.contract import ModelContract, to_model_layout
from fer_runtime.data.shifts import MODERATE, SEVERITIES, SHIFTS, image_seed, shifted_images, zoom
from fer_runtime.detect import Detection, crop_face


def textured_face(seed: int = 0, side: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.normal(128, 40, (side, side))).clip(0, 255)
    img[14:34, 10:38] = 220  # a bright block with edges: blur, noise and JPEG all show on it
    return img.astype(np.uint8)


def as_grey(img: np.ndarray) -> np.ndarray:
    return to_model_layout(img, 1, 48, 48)[0].astype(np.float64)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_each_shift_changes_the_face_more_at_each_severity_and_repeats_with_its_seed(name):
    base = np.stack([textured_face(i)[None] for i in range(4)])
    distances = []
    for severity in range(len(SEVERITIES)):
        out = shifted_images(base, name, severity)
        again = shifted_images(base, name, severity)
        assert all(np.array_equal(a, b) for a, b in zip(out, again))  # seeded per image: the same every run
        assert all(o.dtype == np.uint8 and o.shape[:2] == (48, 48) for o in out)
        distances.append(np.mean([np.abs(as_grey(o) - b[0]).mean() for o, b in zip(out, base)]))
    assert distances[0] > 0.5, f"{name} mild leaves the face as it was"
    assert distances[0] < distances[1] < distances[2], f"{name}: severities do not grow: {distances}"


def test_framing_shifts_move_and_scale_the_face_as_stated():
    img = np.zeros((48, 48), np.uint8)
    img[12:36, 12:36] = 255  # a 24 px square in the middle
    wider = zoom(img, 1.5)  # a box 1.5 times the side: the square is 16 px
    assert (wider > 127).sum(0).max() == pytest.approx(16, abs=1)
    tighter = zoom(img, 0.75)  # 32 px
    assert (tighter > 127).sum(0).max() == pytest.approx(32, abs=1)
    moved = zoom(img, 1.0, dx=0.25)  # the box moves right by a quarter: the face moves left by 12 px
    cols = np.flatnonzero((moved > 127).any(0))
    assert cols.min() == pytest.approx(0, abs=1) and cols.max() == pytest.approx(23, abs=1)


def test_the_colour_camera_path_gives_bgr_with_a_cast_the_runtime_turns_grey():
    out = shifted_images(textured_face()[None, None], "colour_camera", MODERATE)[0]
    assert out.ndim == 3 and out.shape[2] == 3
    b, g, r = (out[..., k].astype(float).mean() for k in range(3))
    assert r > g > b  # a warm cast
    assert to_model_layout(out, 1, 48, 48).shape == (1, 48, 48)


def test_image_seeds_differ_between_images_shifts_and_severities():
    seeds = {image_seed(s, v, i) for s in ("noise", "jpeg") for v in range(3) for i in range(50)}
    assert len(seeds) == 300


def test_crop_face_moves_the_crop_by_its_offset_in_box_sides():
    frame = np.zeros((200, 200), np.uint8)
    frame[100:, :] = 255  # bottom half bright
    det = Detection((50.0, 50.0, 100.0, 100.0))
    centred = crop_face(frame, det, 0.0)
    lower = crop_face(frame, det, 0.0, (0.0, 0.25))  # centre 25 px lower: 75 of 100 rows are bright
    assert centred.shape == lower.shape == (100, 100)
    assert (centred > 127).mean() == pytest.approx(0.5, abs=0.01)
    assert (lower > 127).mean() == pytest.approx(0.75, abs=0.01)


def test_contract_carries_the_crop_offset_and_refuses_a_wild_one():
    from fer_runtime.contract import ContractError

    c = ModelContract(classes=("a", "b"), crop_offset=(0.01, -0.02))
    assert ModelContract.from_json(c.to_json()).crop_offset == (0.01, -0.02)
    old = {**c.to_dict(), "version": 4}
    del old["crop_offset"]
    assert ModelContract.from_dict(old).crop_offset == (0.0, 0.0)  # a file from before the field crops centred
    for bad in ((0.9, 0.0), (0.1,), "ab"):
        with pytest.raises(ContractError, match="crop_offset"):
            ModelContract(classes=("a",), crop_offset=bad)


# ------------------------------------------------------------------------------------------------ the shift report


def test_bench_shift_report_scores_each_shift_as_the_model_would_alone(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from benchmarks.bench import main as bench_main
    from fer_runtime.contract import read_onnx_contract
    from fer_runtime.data import discover, load_split
    from tests.onnx_models import bars_classifier
    from tests.test_bench import _faint_bars

    # a model that reads the bars, on bars faint enough that shifts change its answers: drops are not all zero
    model = bars_classifier(tmp_path / "tiny.onnx", ModelContract(classes=("angry", "happy", "sad")))
    root = _faint_bars(tmp_path / "data", per_class=10, contrast=4.0)
    out = tmp_path / "bench"
    result = CliRunner().invoke(bench_main, ["--model", str(model), "--data-root", str(root), "--out-dir", str(out),
                                             "--calls", "2", "--no-incumbent", "--shifts", "all"])
    assert result.exit_code == 0, result.output
    r = json.loads((out / "results.json").read_text())
    report = r["shifts"]["models"]["tiny.onnx"]
    assert set(report["shifts"]) == set(SHIFTS)
    assert all([row["severity"] for row in rows] == list(SEVERITIES) for rows in report["shifts"].values())
    assert "## Shift report" in (out / "report.md").read_text() and (out / "shifts.png").stat().st_size > 0
    # independently: the noise rows recomputed here with onnxruntime and the contract's own preprocessing
    contract = read_onnx_contract(model)
    decoded = load_split(discover(str(root)), "test", 1, (48, 48))
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for severity, row in enumerate(report["shifts"]["noise"]):
        images = shifted_images(decoded.images, "noise", severity)
        logits = session.run(None, {session.get_inputs()[0].name: contract.preprocess(images)})[0]
        assert row["accuracy"] == pytest.approx(float((logits.argmax(1) == decoded.labels).mean()))
        assert row["drop"] == pytest.approx(100 * (report["clean"]["accuracy"] - row["accuracy"]))
    assert max(row["drop"] for row in report["shifts"]["noise"]) > 0  # the harsh noise costs this model something
    moderate = {s: rows[MODERATE]["drop"] for s, rows in report["shifts"].items()}
    assert report["moderate"]["worst_drop"] == pytest.approx(max(moderate.values()))
    assert report["moderate"]["mean_drop"] == pytest.approx(np.mean(list(moderate.values())))
    assert report["clean"]["accuracy"] == pytest.approx(r["models"]["tiny.onnx"]["quality"]["accuracy"])


def test_bench_without_shifts_writes_no_shift_report(tiny_model_factory, tree_factory, tmp_path):
    from benchmarks.bench import main as bench_main

    root = tree_factory("train-test", per_class=4, seed=4)
    out = tmp_path / "bench"
    result = CliRunner().invoke(bench_main, ["--model", str(tiny_model_factory()), "--data-root", str(root),
                                             "--out-dir", str(out), "--calls", "1", "--no-incumbent"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["shifts"] is None
    assert not (out / "shifts.png").exists()


# ------------------------------------------------------------------------------------------------ training


def test_degrade_draws_from_torch_so_a_resumed_run_repeats_it():
    torch = pytest.importorskip("torch")
    from fer_train.augment import degrade

    batch = torch.from_numpy(np.stack([textured_face(i)[None] for i in range(16)]))
    assert degrade(batch, 0.0) is batch
    torch.manual_seed(7)
    a = degrade(batch, 1.0)
    torch.manual_seed(7)
    b = degrade(batch, 1.0)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == batch.shape
    assert all(not torch.equal(a[i], batch[i]) for i in range(16))  # p = 1: every image degraded
    assert torch.equal(batch, torch.from_numpy(np.stack([textured_face(i)[None] for i in range(16)])))  # input kept


def test_degrade_keeps_a_colour_batch_in_rgb_layout():
    torch = pytest.importorskip("torch")
    from fer_train.augment import degrade

    rgb = torch.zeros(4, 3, 48, 48, dtype=torch.uint8)
    rgb[:, 0] = 200  # red
    torch.manual_seed(0)
    out = degrade(rgb, 1.0)
    assert out.shape == rgb.shape
    assert (out[:, 0].float().mean() > out[:, 2].float().mean()).item()  # still red, not swapped to blue


def test_fixed_shift_gives_every_training_image_the_reports_moderate_shift():
    torch = pytest.importorskip("torch")
    from fer_train.augment import fixed_shift

    base = np.stack([textured_face(i)[None] for i in range(6)])
    out = fixed_shift(torch.from_numpy(base), "defocus").numpy()
    expected = shifted_images(base, "defocus", MODERATE)
    assert all(np.array_equal(o[0], e) for o, e in zip(out, expected))


def test_fer_export_records_the_measured_framing_and_refuses_half_an_offset(tree_factory, tmp_path, capsys):
    pytest.importorskip("torch")
    from fer_export.cli import main as export_main
    from fer_runtime.contract import read_onnx_contract
    from fer_train.train import main as train_main

    root = tree_factory("train-val-test", per_class=8, seed=6)
    assert train_main(["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "r", "--arch", "vgg",
                       "--arch-arg", "width=0.125", "--epochs", "1", "--batch-size", "8", "--no-progress",
                       "--threads", "1", "--amp", "off"]) == 0
    ckpt = tmp_path / "r" / "best.pt"
    args = ["--ckpt", str(ckpt), "--out-dir", str(tmp_path / "exports"), "--data-root", str(root), "--threads", "1"]
    assert export_main([*args, "--name", "framed", "--crop-margin", "0.02", "--crop-offset", "0",
                        "--crop-offset", "-0.05"]) == 0
    contract = read_onnx_contract(tmp_path / "exports" / "framed" / "model.onnx")
    assert contract.crop_margin == 0.02 and contract.crop_offset == (0.0, -0.05)
    # an exported file framed again (make reexport's path): the fp32 copy and its INT8 file both carry the new framing
    assert export_main(["--model", str(tmp_path / "exports" / "framed" / "model.onnx"), "--int8", "--calib-size", "16",
                        "--out-dir", str(tmp_path / "exports"), "--data-root", str(root), "--threads", "1",
                        "--name", "reframed", "--crop-margin", "0.05"]) == 0
    for name in ("model.onnx", "model.int8.onnx"):
        again = read_onnx_contract(tmp_path / "exports" / "reframed" / name)
        assert again.crop_margin == 0.05 and again.crop_offset == (0.0, -0.05)
    capsys.readouterr()
    assert export_main([*args, "--name", "half", "--crop-offset", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--crop-offset takes dx and dy" in err[0]
    assert not (tmp_path / "exports" / "half").exists()


def test_degrade_out_of_range_and_fixed_shift_with_degrade_are_one_line(tree_factory, tmp_path, capsys):
    pytest.importorskip("torch")
    from fer_train.train import main as train_main

    root = tree_factory("train-val-test", per_class=4, seed=6)
    base = ["--data-root", str(root), "--out-dir", str(tmp_path), "--epochs", "1", "--no-progress", "--threads", "1"]
    cases = ((["--degrade", "1.5"], "--degrade"), (["--fixed-shift", "noise", "--degrade", "0.3"], "--fixed-shift"))
    for extra, message in cases:
        capsys.readouterr()
        assert train_main([*base, "--name", "x", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x").exists()


def test_train_transform_degrades_only_when_asked():
    torch = pytest.importorskip("torch")
    from fer_train.augment import AugmentConfig, normalize, train_transform

    batch = torch.from_numpy(np.stack([textured_face(i)[None] for i in range(8)]))
    still = {"shift": 0.0, "scale": (1.0, 1.0), "rotation": 0.0, "hflip": False}
    clean = normalize(batch, (0.5,), (0.5,))
    assert torch.allclose(train_transform(batch, AugmentConfig(**still), (0.5,), (0.5,)), clean, atol=1e-5)
    degraded = train_transform(batch, AugmentConfig(**still, degrade=1.0), (0.5,), (0.5,))
    assert all(not torch.allclose(degraded[i], clean[i], atol=1e-3) for i in range(8))
