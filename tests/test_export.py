from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from fer_export.cli import main as export_main
from fer_export.onnx_export import ExportError, export_onnx, parity_check, set_contract
from fer_export.prune import count_flops_params, prune_channels
from fer_export.quantize import FaceCalibrationReader, quantize_int8, stratified_sample
from fer_runtime.contract import METADATA_KEY, ContractError, ModelContract, read_onnx_contract
from fer_runtime.session import OnnxModel
from fer_train.checkpoint import fit_modules_to_state_dict, load_checkpoint, model_from_checkpoint
from fer_train.losses import distillation_loss
from fer_train.models import create_model, list_models
from fer_train.teacher import LoadedTeacher, load_teacher, make_teacher, stored_teacher_targets, teacher_targets
from fer_train.train import main as train_main

CONTRACT = ModelContract(classes=("angry", "happy", "sad"), mean=(0.4,), std=(0.3,), crop_margin=0.15,
                         provenance={"source": "test"})


@pytest.fixture(scope="module")
def trained_run(tree_factory, tmp_path_factory):
    root = tree_factory("train-val-test", per_class=32, seed=5)
    out = tmp_path_factory.mktemp("runs")
    args = ["--data-root", str(root), "--out-dir", str(out), "--name", "r", "--arch", "vgg", "--arch-arg",
            "width=0.25", "--batch-size", "8", "--epochs", "4", "--no-progress", "--threads", "1", "--amp", "off",
            "--lr", "3e-3"]
    assert train_main(args) == 0
    return out / "r", root


def test_contract_round_trip(tmp_path):
    model = create_model("vgg", 3, 1, width=0.125)
    path = export_onnx(model, CONTRACT, tmp_path / "m.onnx")
    back = read_onnx_contract(path)
    assert back.classes == CONTRACT.classes and back.mean == (0.4,) and back.std == (0.3,)
    assert back.crop_margin == 0.15 and back.provenance == {"source": "test"} and back.output == "logits"
    assert onnx.load(str(path)).opset_import[0].version >= 17
    sess = OnnxModel(path)
    assert sess.run(np.zeros((5, 1, 48, 48), np.float32)).shape == (5, 3)  # dynamic batch


def test_contract_rejects_bad_values():
    with pytest.raises(ContractError):
        ModelContract(classes=("a", "a"))
    with pytest.raises(ContractError):
        ModelContract(classes=("a",), channels=3, mean=(0.5,), std=(0.5,))
    with pytest.raises(ContractError, match="missing"):
        ModelContract.from_json(json.dumps({"classes": ["a"]}))


def test_model_without_contract_is_rejected(tmp_path):
    model = create_model("vgg", 3, 1, width=0.125)
    path = export_onnx(model, CONTRACT, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(ContractError, match=METADATA_KEY):
        read_onnx_contract(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_text("junk")
    with pytest.raises(ContractError, match="not a readable ONNX"):
        read_onnx_contract(tmp_path / "junk.onnx")


def test_parity_check_fails_on_altered_graph(tmp_path):
    torch.manual_seed(0)
    model = create_model("vgg", 3, 1, width=0.125).eval()
    path = export_onnx(model, CONTRACT, tmp_path / "m.onnx")
    images = np.random.default_rng(0).integers(0, 255, (64, 1, 48, 48), dtype=np.uint8)
    ok = parity_check(model, path, images)
    assert ok["top1_agreement"] == 1.0 and ok["max_abs_logit_diff"] < 1e-3
    proto = onnx.load(str(path))
    gemm_bias = [n for n in proto.graph.node if n.op_type == "Gemm"][-1].input[2]  # the classifier
    init = next(i for i in proto.graph.initializer if i.name == gemm_bias)
    bias = onnx.numpy_helper.to_array(init).copy()
    with torch.no_grad():
        rarest = int(torch.bincount(model(torch.from_numpy(CONTRACT.normalize(images))).argmax(1), minlength=3).argmin())
    bias[rarest] += 100.0  # the altered graph now always predicts the class PyTorch predicts least
    init.CopyFrom(onnx.numpy_helper.from_array(bias, gemm_bias))
    set_contract(proto, CONTRACT)
    onnx.save(proto, str(tmp_path / "altered.onnx"))
    with pytest.raises(ExportError, match="agree on"):
        parity_check(model, tmp_path / "altered.onnx", images)


def test_quantization_end_to_end(tmp_path):
    torch.manual_seed(0)
    model = create_model("vgg", 3, 1, width=0.25).eval()
    fp32 = export_onnx(model, CONTRACT, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 1, 48, 48), dtype=np.uint8)
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", FaceCalibrationReader(images, CONTRACT), "minmax",
                         keep_float=["first_conv", "avg_pool"])
    assert read_onnx_contract(int8) == read_onnx_contract(fp32)
    proto = onnx.load(str(int8))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    producers = {out: n.op_type for n in proto.graph.node for out in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert producers.get(convs[0].input[1]) is None  # float weights: an initializer, no DequantizeLinear
    assert all(producers.get(c.input[1]) == "DequantizeLinear" for c in convs[1:])
    pool_outputs = {n.output[0] for n in proto.graph.node if n.op_type == "AveragePool"}
    assert pool_outputs and not any(n.op_type == "QuantizeLinear" and n.input[0] in pool_outputs for n in proto.graph.node)
    assert int8.stat().st_size < fp32.stat().st_size / 2.5


def _folder_images(split_dir) -> tuple[np.ndarray, np.ndarray]:
    """Every PNG of a class-folder split, read with PIL: uint8 N x 1 x 48 x 48 and labels in class order."""
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(sorted(p.name for p in split_dir.iterdir())):
        for f in sorted((split_dir / name).glob("*.png")):
            images.append(np.asarray(Image.open(f).convert("L"))[None])
            labels.append(label)
    return np.stack(images), np.asarray(labels)


def test_int8_gives_the_trained_models_answers(trained_run, tmp_path):
    """A model trained on the bars is confident, so an INT8 file that lost what it learnt (uniform, or wrong) shows."""
    run, root = trained_run
    model, contract = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    fp32 = export_onnx(model.eval(), contract, tmp_path / "m.onnx")
    calib, _ = _folder_images(root / "train")
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", FaceCalibrationReader(calib, contract), "minmax")
    images, labels = _folder_images(root / "test")
    a, b = OnnxModel(fp32).predict_pixels(images), OnnxModel(int8).predict_pixels(images)
    # the test has power: the fp32 model is right and far from uniform
    assert (a.argmax(1) == labels).mean() >= 0.9 and a.max(1).mean() > 0.8, a.max(1).mean()
    backing = b[np.arange(len(a)), a.argmax(1)]  # INT8's probability for fp32's answer, on every image
    assert (b.argmax(1) == a.argmax(1)).mean() >= 0.97 and backing.min() > 0.6 and np.median(backing) > 0.95, backing
    assert np.abs(a - b).mean() < 0.05, np.abs(a - b).mean()


def test_quantizing_an_onnx_file_follows_the_fer2013_protocol_it_was_trained_under(tree_factory, tmp_path):
    root = tree_factory("fer2013", per_class=12)
    contract = CONTRACT.replace(provenance={"data_root": str(root), "layout": "fer2013"})
    fp32 = export_onnx(create_model("vgg", 3, 1, width=0.125).eval(), contract, tmp_path / "m.onnx")
    assert export_main(["--model", str(fp32), "--int8", "--calib-size", "12", "--max-drop", "100", "--out-dir", str(tmp_path),
                        "--name", "q"]) == 0
    report = json.loads((tmp_path / "q" / "export_report.json").read_text())
    for row in report["artefacts"]:  # val = the 6 PublicTest images per class, test = the 6 PrivateTest ones
        assert row["val"]["num_samples"] == row["test"]["num_samples"] == 18


STAGE_ARGV = {  # each stage of fer-export that reads data, with no --data-root
    "quantize": ["--model", "{onnx}", "--int8", "--calib-size", "12", "--max-drop", "100"],
    "distill": ["--distill-from", "{ckpt}", "--arch", "vgg", "--arch-arg", "width=0.125", "--epochs", "1"],
    "prune": ["--ckpt", "{ckpt}", "--prune", "0.5", "--finetune-epochs", "1"],
}
TRAINING = ["--train-option", "threads=1", "--train-option", "batch_size=8"]


def _stage_argv(stage: str, trained_run, tmp_path) -> list[str]:
    run, saved_root = trained_run
    # an exported file that records the run's data root, as fer-export writes it
    contract = CONTRACT.replace(provenance={"data_root": str(saved_root)})
    onnx_path = export_onnx(create_model("vgg", 3, 1, width=0.125).eval(), contract, tmp_path / "m.onnx")
    argv = [a.format(onnx=onnx_path, ckpt=run / "best.pt") for a in STAGE_ARGV[stage]]
    return [*argv, *(TRAINING if stage != "quantize" else []), "--out-dir", str(tmp_path / "out"), "--name", "x"]


@pytest.mark.parametrize("stage", sorted(STAGE_ARGV))
def test_fer_data_root_outranks_the_saved_root_in_every_stage(stage, trained_run, tree_factory, tmp_path, monkeypatch):
    """--data-root, then FER_DATA_ROOT, then the root the run or the file recorded: in every stage alike."""
    env_root = tree_factory("train-val-test", per_class=5, seed=9)  # 15 val images; the run's root has 96
    monkeypatch.setenv("FER_DATA_ROOT", str(env_root))
    assert export_main(_stage_argv(stage, trained_run, tmp_path)) == 0
    out = tmp_path / "out" / "x"
    report = json.loads((out / "export_report.json").read_text())
    assert {row["val"]["num_samples"] for row in report["artefacts"]} == {15}
    trained = {"distill": "student_kd", "prune": "pruned_finetune"}.get(stage)
    if trained:  # the training stage itself ran on that root
        assert json.loads((out / trained / "config.json").read_text())["data_root"] == str(env_root)


@pytest.mark.parametrize("stage", sorted(STAGE_ARGV))
def test_a_missing_fer_data_root_is_named_by_every_stage(stage, trained_run, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no_such_data"
    monkeypatch.setenv("FER_DATA_ROOT", str(missing))
    assert export_main(_stage_argv(stage, trained_run, tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fer-export: error: ") and str(missing) in err[0], err
    assert not (tmp_path / "out").exists()


def test_stratified_calibration_sample_covers_classes():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    idx = stratified_sample(labels, 100)
    assert np.bincount(labels[idx]).tolist() == [90, 9, 1]


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.2, 2.5, 1.0]])
    T = 2.0
    ps = np.exp(s.numpy() / T) / np.exp(s.numpy() / T).sum()
    pt = np.exp(t.numpy() / T) / np.exp(t.numpy() / T).sum()
    expected = float((pt * (np.log(pt) - np.log(ps))).sum() * T * T)
    assert distillation_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name, kwargs", [("vgg", {"width": 0.25}), ("mobile", {"width": 0.5}), ("resnet", {"width": 0.25})])
def test_pruned_shapes_and_export(tmp_path, name, kwargs):
    model = create_model(name, 3, 1, **kwargs)
    before, params_before = count_flops_params(model, CONTRACT)
    pruned = prune_channels(model, CONTRACT, ratio=0.5)
    after, params_after = count_flops_params(pruned, CONTRACT)
    assert before / after >= 1.8 and params_after < params_before
    assert pruned(torch.zeros(2, 1, 48, 48)).shape == (2, 3)
    rebuilt = create_model(name, 3, 1, **kwargs)
    fit_modules_to_state_dict(rebuilt, pruned.state_dict())
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 1, 48, 48)
    assert torch.allclose(rebuilt.eval()(x), pruned.eval()(x), atol=1e-5)
    path = export_onnx(pruned, CONTRACT, tmp_path / "p.onnx")
    assert OnnxModel(path).run(x.numpy()).shape == (2, 3)


def test_fer_export_int8_everyday_path(trained_run, tmp_path):
    run, _ = trained_run
    assert export_main(["--ckpt", str(run / "best.pt"), "--int8", "--out-dir", str(tmp_path), "--name", "e",
                        "--calib-size", "48", "--max-drop", "100"]) == 0
    out = tmp_path / "e"
    report = json.loads((out / "export_report.json").read_text())
    names = [r["name"] for r in report["artefacts"]]
    assert names == ["pytorch", "onnx fp32", "onnx int8"]
    assert report["parity"]["top1_agreement"] >= 0.999
    assert report["ratios"]["int8_size_reduction"] > 2.5
    calibration = report["calibration"]  # the images that calibrated: whole batches of 32 of those sampled
    assert calibration["sampled"] >= 48 and calibration["images"] == calibration["sampled"] // 32 * 32
    contract = read_onnx_contract(out / "model.int8.onnx")
    assert contract.provenance["source_checkpoint"].endswith("best.pt")
    assert (out / "export_report.md").read_text().count("| onnx") == 2
    assert not list(tmp_path.glob(".*partial*"))


def test_fer_export_prune_and_distill(trained_run, tmp_path):
    run, root = trained_run
    assert export_main(["--ckpt", str(run / "best.pt"), "--prune", "0.5", "--finetune-epochs", "1", "--out-dir", str(tmp_path),
                        "--name", "p", "--train-option", "threads=1", "--train-option", "batch_size=8"]) == 0
    report = json.loads((tmp_path / "p" / "export_report.json").read_text())
    assert report["pruning"]["flops_reduction"] >= 1.8
    state = load_checkpoint(tmp_path / "p" / "pruned_finetune" / "best.pt")
    assert state["pruned"]
    model, _ = model_from_checkpoint(state)
    assert model(torch.zeros(1, 1, 48, 48)).shape == (1, 3)
    assert export_main(["--distill-from", str(run / "best.pt"), "--arch", "mobile", "--arch-arg", "width=0.25",
                        "--epochs", "1", "--compare-baseline", "--out-dir", str(tmp_path), "--name", "d",
                        "--train-option", "threads=1", "--train-option", "batch_size=8"]) == 0
    report = json.loads((tmp_path / "d" / "export_report.json").read_text())
    assert set(report["distillation"]["test"]) == {"kd", "alone"}
    renamed = tmp_path / "renamed"  # a class folder renamed since training: refused, not calibrated on wrong labels
    shutil.copytree(root, renamed)
    first = sorted(p for p in (renamed / "train").iterdir() if p.is_dir())[0]
    first.rename(first.parent / "zz_renamed")
    for split in ("val", "test"):
        if (renamed / split / first.name).is_dir():
            (renamed / split / first.name).rename(renamed / split / "zz_renamed")
    assert export_main(["--ckpt", str(run / "best.pt"), "--data-root", str(renamed), "--out-dir", str(tmp_path),
                        "--name", "r"]) == 2
    assert not (tmp_path / "r").exists()


def test_fer_export_full_chain_distils_through_the_fine_tune(trained_run, tmp_path):
    run, _ = trained_run
    assert export_main(["--distill-from", str(run / "best.pt"), "--arch", "vgg", "--arch-arg", "width=0.25",
                        "--epochs", "1", "--prune", "0.5", "--finetune-epochs", "1", "--int8", "--calib-size", "24",
                        "--max-drop", "100", "--out-dir", str(tmp_path), "--name", "c",
                        "--train-option", "threads=1", "--train-option", "batch_size=8"]) == 0
    out = tmp_path / "c"
    report = json.loads((out / "export_report.json").read_text())
    names = [r["name"] for r in report["artefacts"]]
    assert names == ["student (pytorch)", "pruned (no fine-tune)", "pruned + fine-tuned", "onnx fp32", "onnx int8"]
    finetune_config = json.loads((out / "pruned_finetune" / "config.json").read_text())
    assert finetune_config["teacher"] == [str(run / "best.pt")]
    contract = read_onnx_contract(out / "model.int8.onnx")
    exported = report["artefacts"][2]
    assert contract.provenance["metrics"]["test"]["accuracy"] == exported["test"]["accuracy"]
    assert contract.provenance["teacher_checkpoint"] == str((run / "best.pt").resolve())
    assert contract.provenance["source_checkpoint"] == str((out / "pruned_finetune" / "best.pt").resolve())  # where it is


def test_teacher_guides_the_fine_tune_of_a_pruned_checkpoint(trained_run, tmp_path):
    run, _ = trained_run
    assert export_main(["--ckpt", str(run / "best.pt"), "--distill-from", str(run / "best.pt"), "--prune", "0.3",
                        "--finetune-epochs", "1", "--out-dir", str(tmp_path), "--name", "s",
                        "--train-option", "threads=1", "--train-option", "batch_size=8"]) == 0
    out = tmp_path / "s"
    assert not (out / "student_kd").exists()  # no student trained: the source is the student
    assert json.loads((out / "pruned_finetune" / "config.json").read_text())["teacher"] == [str(run / "best.pt")]
    assert read_onnx_contract(out / "model.onnx").provenance["teacher_checkpoint"] == str((run / "best.pt").resolve())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ckpt", "{tmp}/nothing.pt"], "not found"),
        (["--ckpt", "{tmp}/text.pt"], "not a fer-train checkpoint"),
        (["--ckpt", "{ckpt}", "--prune", "1.5"], "must be in (0, 1)"),
        (["--ckpt", "{ckpt}", "--calib-size", "0"], "0 is not in the range x>=1"),
        (["--ckpt", "{ckpt}", "--prune", "0.5", "--prune-steps", "0"], "--prune-steps"),
        (["--ckpt", "{ckpt}", "--opset", "5"], "13<=x<=20"),
        (["--ckpt", "{ckpt}", "--int8", "--max-drop", "-5"], "--max-drop"),
        (["--ckpt", "{ckpt}", "--prune-flops", "0.5"], "above 1"),
        (["--ckpt", "{ckpt}", "--name", "."], "plain folder name"),
        (["--ckpt", "{ckpt}", "--name", "../escaped"], "plain folder name"),
        (["--distill-from", "{ckpt}"], "needs --arch"),
        (["--ckpt", "{ckpt}", "--distill-from", "{ckpt}"], "add --prune"),
        (["--model", "{tmp}/text.onnx", "--int8"], "not a readable ONNX"),
    ],
)
def test_export_bad_input(trained_run, tmp_path, capsys, argv, message):
    run, _ = trained_run
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "text.onnx").write_text("hello")
    argv = [a.format(tmp=tmp_path, ckpt=run / "best.pt") for a in argv] + ["--out-dir", str(tmp_path / "out")]
    assert export_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # the --out-dir it would have made is gone too


def test_a_checkpoint_of_an_unfinished_run_exports_with_a_note(tree_factory, tmp_path, capsys):
    root = tree_factory("train-val-test", per_class=6, seed=7)
    assert train_main(["--data-root", str(root), "--out-dir", str(tmp_path), "--name", "u", "--arch", "vgg", "--arch-arg",
                       "width=0.125", "--epochs", "3", "--stop-after", "1", "--batch-size", "8", "--no-progress",
                       "--threads", "1", "--amp", "off"]) == 0
    capsys.readouterr()
    assert export_main(["--ckpt", str(tmp_path / "u" / "last.pt"), "--out-dir", str(tmp_path), "--name", "e"]) == 0
    assert "has not finished (epoch 1 of 3)" in capsys.readouterr().err
    notes = json.loads((tmp_path / "e" / "export_report.json").read_text())["notes"]
    assert any("has not finished (epoch 1 of 3)" in n for n in notes)


def test_distill_class_mismatch(trained_run, tree_factory, tmp_path, capsys):
    run, _ = trained_run
    other = tree_factory("class-folders", per_class=6)
    (other / "surprise").mkdir()
    from PIL import Image

    for i in range(6):
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(other / "surprise" / f"{i}.png")
    code = export_main(["--distill-from", str(run / "best.pt"), "--arch", "mobile", "--data-root", str(other),
                        "--epochs", "1", "--out-dir", str(tmp_path / "o")])
    assert code == 2
    assert "teacher classes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_int8_gate_fails_but_keeps_report_and_fp32(trained_run, tmp_path, capsys, monkeypatch):
    from fer_export import pipeline

    run, _ = trained_run
    gate = pipeline._int8_gate
    monkeypatch.setattr(pipeline, "_int8_gate", lambda cfg, drop, path, report: gate(cfg, drop + 150.0, path, report))
    code = export_main(["--ckpt", str(run / "best.pt"), "--int8", "--out-dir", str(tmp_path), "--name", "g", "--calib-size", "24",
                        "--max-drop", "100"])
    assert code == 3
    assert "INT8 loses" in capsys.readouterr().err
    out = tmp_path / "g"
    assert (out / "model.onnx").exists() and not (out / "model.int8.onnx").exists()
    report = json.loads((out / "export_report.json").read_text())
    assert "int8" not in report["paths"] and any("INT8 file removed" in n for n in report["notes"])


def test_interrupted_distillation_resumes_where_it_stopped(trained_run, tmp_path, monkeypatch, capsys):
    run, _ = trained_run
    argv = ["--distill-from", str(run / "best.pt"), "--arch", "vgg", "--arch-arg", "width=0.25", "--epochs", "2",
            "--out-dir", str(tmp_path), "--name", "k", "--train-option", "threads=1",
            "--train-option", "batch_size=8"]

    from fer_train.train import fit

    def one_epoch_then_killed(cfg, resume=None):
        fit(cfg, resume=resume, stop_after=1)
        raise KeyboardInterrupt

    monkeypatch.setattr("fer_export.training.fit", one_epoch_then_killed)
    assert export_main(argv) == 130
    assert "continue with --name k --resume" in capsys.readouterr().err
    staged = tmp_path / ".k.partial" / "student_kd"
    first_sitting = json.loads((staged / "history.json").read_text())
    assert [h["epoch"] for h in first_sitting] == [1]

    monkeypatch.setattr("fer_export.training.fit", fit)
    capsys.readouterr()
    assert export_main([*argv, "--resume"]) == 0
    assert "student training: resuming from" in capsys.readouterr().out
    history = json.loads((tmp_path / "k" / "student_kd" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first_sitting[0]  # continued, not restarted
    assert json.loads((tmp_path / "k" / "student_kd" / "metrics.json").read_text())["complete"]
    assert not staged.exists() and (tmp_path / "k" / "model.onnx").exists()


def test_onnx_teacher_matches_its_checkpoint_and_ensembles_average_probabilities(trained_run, tmp_path):
    run, _ = trained_run
    model, contract = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    onnx_path = export_onnx(model, contract, tmp_path / "t.onnx")
    cpu = torch.device("cpu")
    pt, ox = load_teacher(str(run / "best.pt"), cpu), load_teacher(str(onnx_path), cpu)
    student = contract.replace(mean=(0.3,), std=(0.2,))  # the teacher must renormalise the student's batch
    x = (torch.rand(6, 1, 48, 48) - 0.3) / 0.2
    with torch.no_grad():
        direct = model(x * 0.2 / contract.std[0] + (0.3 - contract.mean[0]) / contract.std[0])
        from_pt, from_onnx = make_teacher([pt], student, cpu)(x), make_teacher([ox], student, cpu)(x)
        pair = make_teacher([pt, ox], student, cpu)(x)
        flipped = make_teacher([pt], student, cpu, tta="flip")(x)
        mirror = make_teacher([pt], student, cpu)(x.flip(-1))
    torch.testing.assert_close(from_pt, direct)
    torch.testing.assert_close(from_onnx, direct, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pair.softmax(1), direct.softmax(1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(flipped.exp(), (direct.softmax(1) + mirror.softmax(1)) / 2)


def test_cached_teacher_targets_match_the_online_teacher_and_use_each_teachers_own_view(trained_run):
    run, _ = trained_run
    cpu = torch.device("cpu")
    pt = load_teacher(str(run / "best.pt"), cpu)
    images = np.random.default_rng(0).integers(0, 256, (10, 1, 48, 48), dtype=np.uint8)
    student = pt.contract.replace(mean=(0.3,), std=(0.2,))
    x = (torch.from_numpy(images).float() / 255 - 0.3) / 0.2
    with torch.no_grad():
        online = make_teacher([pt], student, cpu, tta="flip")(x)
    torch.testing.assert_close(teacher_targets([pt], images, cpu, tta="flip"), online, atol=1e-5, rtol=1e-5)

    # each teacher scores the images in its own normalisation
    seen = {}

    def recorder(name):
        def net(batch):
            seen[name] = batch.clone()
            return torch.zeros(len(batch), 3)

        return net

    raw = ModelContract(classes=("a", "b", "c"), mean=(0.5,), std=(0.5,))
    other = raw.replace(mean=(0.3,), std=(0.2,))
    targets = teacher_targets([LoadedTeacher("raw", raw, recorder("raw")), LoadedTeacher("other", other, recorder("other"))],
                              images, cpu)
    torch.testing.assert_close(seen["raw"], (torch.from_numpy(images).float() / 255 - 0.5) / 0.5)
    torch.testing.assert_close(seen["other"], (torch.from_numpy(images).float() / 255 - 0.3) / 0.2)
    torch.testing.assert_close(targets.exp(), torch.full((10, 3), 1 / 3))


def test_stored_teacher_targets_are_scored_once_per_teacher_file_tta_and_images(tmp_path):
    calls = []

    def net(batch):
        calls.append(len(batch))
        return batch.mean((2, 3)).repeat(1, 3) * torch.tensor([1.0, 2.0, 3.0])

    (tmp_path / "t.pt").write_bytes(b"teacher one")
    teacher = LoadedTeacher(str(tmp_path / "t.pt"), ModelContract(classes=("a", "b", "c")), net)
    images = np.random.default_rng(0).integers(0, 256, (10, 1, 48, 48), dtype=np.uint8)
    cpu, cache = torch.device("cpu"), tmp_path / "cache"
    first, stored = stored_teacher_targets([teacher], images, cpu, "none", cache)
    assert stored is None and calls == [10]
    again, stored = stored_teacher_targets([teacher], images, cpu, "none", cache)
    assert stored is not None and stored.parent == cache and calls == [10]  # read back, not scored
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(first, teacher_targets([teacher], images, cpu))
    calls.clear()
    assert stored_teacher_targets([teacher], images, cpu, "flip", cache)[1] is None  # another TTA
    assert stored_teacher_targets([teacher], images[:9], cpu, "none", cache)[1] is None  # other images
    (tmp_path / "t.pt").write_bytes(b"teacher two")
    assert stored_teacher_targets([teacher], images, cpu, "none", cache)[1] is None  # the teacher file changed
    assert calls == [20, 9, 10]  # flip: each image and its mirror in one batch
    stored.write_bytes(b"damaged")  # a damaged file is scored again and replaced
    (tmp_path / "t.pt").write_bytes(b"teacher one")
    assert stored_teacher_targets([teacher], images, cpu, "none", cache)[1] is None
    assert stored_teacher_targets([teacher], images, cpu, "none", cache)[1] == stored


def test_fer_train_with_cached_teacher_targets(trained_run, tmp_path, capsys):
    run, root = trained_run
    args = ["--data-root", str(root), "--out-dir", str(tmp_path), "--arch", "vgg", "--arch-arg", "width=0.125",
            "--batch-size", "8", "--epochs", "1", "--no-progress", "--threads", "1", "--amp", "off",
            "--teacher", str(run / "best.pt"), "--teacher-targets", "cached", "--teacher-tta", "flip"]
    assert train_main([*args, "--name", "c"]) == 0
    assert "1 teacher(s) scored the 96 training images once (tta flip" in capsys.readouterr().out
    assert train_main([*args, "--name", "c2"]) == 0  # the same teacher on the same images: read back
    assert "1 teacher(s) scored the 96 training images once (tta flip, read from " in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "config.json").read_text())["teacher_targets"] == "cached"
    assert train_main([*args, "--name", "m", "--mixup", "0.2"]) == 2
    assert "cannot follow mixup/cutmix" in capsys.readouterr().err and not (tmp_path / "m").exists()
    stored = tmp_path / "c" / "teacher_targets.npz"  # the targets travel with the run: a student needs no teacher
    assert train_main([*args[:-6], "--name", "f", "--teacher-targets-file", str(stored)]) == 0
    assert f"distilling from {stored} (1 teacher(s), tta flip)" in capsys.readouterr().out
    assert train_main([*args, "--name", "both", "--teacher-targets-file", str(stored)]) == 2
    assert "give --teacher or --teacher-targets-file, not both" in capsys.readouterr().err


def test_stored_teacher_targets_are_refused_for_other_images_or_classes(tmp_path):
    from fer_runtime.data import DataError
    from fer_train.teacher import load_targets, save_targets

    images = np.random.default_rng(0).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    targets = torch.log_softmax(torch.randn(5, 3), dim=1)
    save_targets(tmp_path / "t.npz", targets, images, ["a", "b", "c"], ["t.onnx"], "none")
    back, who = load_targets(tmp_path / "t.npz", images, ["a", "b", "c"])
    torch.testing.assert_close(back, targets, atol=2e-3, rtol=1e-3)
    assert who == "1 teacher(s), tta none"
    with pytest.raises(DataError, match="scored on other training images"):
        load_targets(tmp_path / "t.npz", images[::-1].copy(), ["a", "b", "c"])
    with pytest.raises(DataError, match="are for classes"):
        load_targets(tmp_path / "t.npz", images, ["a", "b", "d"])
    whole = (tmp_path / "t.npz").read_bytes()
    flipped = whole[:100] + bytes([whole[100] ^ 0xFF]) + whole[101:]  # a damaged compressed member
    for broken in (b"not a zip", b"", whole[:200], flipped):
        (tmp_path / "bad.npz").write_bytes(broken)
        with pytest.raises(DataError, match="cannot read teacher targets"):
            load_targets(tmp_path / "bad.npz", images, ["a", "b", "c"])


def test_fer_train_distils_from_an_onnx_and_a_checkpoint_teacher(trained_run, tmp_path, capsys):
    run, root = trained_run
    model, contract = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    onnx_path = export_onnx(model, contract, tmp_path / "t.onnx")
    teachers = [str(run / "best.pt"), str(onnx_path)]
    args = ["--data-root", str(root), "--out-dir", str(tmp_path), "--arch", "vgg", "--arch-arg", "width=0.125",
            "--batch-size", "8", "--epochs", "1", "--no-progress", "--threads", "1", "--amp", "off"]
    assert train_main([*args, "--name", "s", "--teacher", teachers[0], "--teacher", teachers[1], "--teacher-tta", "flip"]) == 0
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (config["teacher"], config["teacher_tta"]) == (teachers, "flip")
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    assert train_main([*args, "--name", "b", "--teacher", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "not a readable ONNX model" in err[-1] and not (tmp_path / "b").exists()


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("timm:")])
def test_every_registered_model_exports_to_onnx_and_int8(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, 3, 1).eval()
    fp32 = export_onnx(model, CONTRACT, tmp_path / f"{name}.onnx")
    images = np.random.default_rng(0).integers(0, 256, (16, 1, 48, 48), dtype=np.uint8)
    assert parity_check(model, fp32, images)["top1_agreement"] == 1.0
    int8 = quantize_int8(fp32, tmp_path / f"{name}.int8.onnx", FaceCalibrationReader(images, CONTRACT))
    assert OnnxModel(int8).predict_pixels(images).shape == (16, 3)


def test_the_contract_names_the_first_conv_and_classifier_and_quantization_reads_them(tmp_path):
    from fer_export.quantize import float_node_names

    model = create_model("resnet", 3, 1).eval()
    path = export_onnx(model, CONTRACT, tmp_path / "r.onnx")
    layers = read_onnx_contract(path).layers
    nodes = {n.name: n.op_type for n in onnx.load(str(path)).graph.node}
    assert nodes[layers["first_conv"]] == "Conv" and nodes[layers["classifier"]] in ("Gemm", "MatMul")
    # the contract wins over node order: name any other Conv as the first one and it is that node that stays float
    other = [n for n, op in nodes.items() if op == "Conv"][-1]
    assert float_node_names(path, ["first_conv", "classifier"], {**layers, "first_conv": other}) == [other, layers["classifier"]]
    assert float_node_names(path, ["first_conv"], {}) == [next(n for n, op in nodes.items() if op == "Conv")]  # fallback


def test_export_training_stages_keep_the_source_runs_protocol_and_selection_metric():
    from fer_export.config import ExportConfig
    from fer_export.training import train_config

    source = {"train_args": {"protocol": "ferplus", "label_mode": "crossentropy", "monitor": "accuracy", "lr": 9.0}}
    cfg = train_config(ExportConfig(ckpt="x.pt", threads=1, train_option=["batch_size=16"]), source, epochs=2)
    assert (cfg.protocol, cfg.label_mode, cfg.monitor, cfg.epochs, cfg.batch_size, cfg.threads) == (
        "ferplus",
        "crossentropy",
        "accuracy",
        2,
        16,
        1,
    )
    assert cfg.lr is None  # optimisation is the stage's own, not the source run's


def test_export_training_stages_keep_the_source_runs_splits_and_input():
    from fer_export.config import ExportConfig
    from fer_export.training import train_config

    source = {"train_args": {"val_split": 0.2, "test_split": 0.1, "seed": 7, "channels": 3, "input_size": 64,
                             "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]}}
    cfg = train_config(ExportConfig(ckpt="x.pt", seed=0), source, epochs=1)
    assert (cfg.val_split, cfg.test_split, cfg.seed, cfg.channels, cfg.input_size) == (0.2, 0.1, 7, 3, 64)
    assert cfg.mean == [0.4, 0.4, 0.4] and cfg.std == [0.2, 0.2, 0.2]


@pytest.mark.parametrize(
    "extra, said",
    [
        (["--train-option", "name=other"], "--train-option name: fer-export sets it (use --name)"),
        (["--train-option", "seed=3"], "--train-option seed: fer-export sets it (it comes from the source run"),
        (["--train-option", "val_split=0.2"], "--train-option val_split: fer-export sets it (it comes from the source run"),
        (["--train-option", "amp=fp32"], "--train-option: amp: 'fp32' is not one of"),
        (["--train-option", "batch_size=many"], "--train-option: batch_size: 'many' is not a valid integer"),
        (["--train-option", "nonsense=1"], "give KEY=VALUE with a fer-train option name"),
    ],
)
def test_train_options_are_checked_before_any_work(trained_run, tmp_path, capsys, extra, said):
    run, _ = trained_run
    args = ["--ckpt", str(run / "best.pt"), "--prune", "0.5", "--out-dir", str(tmp_path), "--name", "x", *extra]
    assert export_main(args) == 2
    assert said in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_train_option_without_a_training_stage_is_refused(trained_run, tmp_path, capsys):
    run, _ = trained_run
    assert export_main(["--ckpt", str(run / "best.pt"), "--train-option", "lr=0.001", "--out-dir", str(tmp_path)]) == 2
    assert "--train-option sets the training stages" in capsys.readouterr().err


def test_train_option_values_take_the_fields_types():
    from fer_export.training import train_options

    assert train_options(["lr=.001", "amp=off", "mean=[0.4]"]) == {"lr": 0.001, "amp": "off", "mean": [0.4]}


def test_int8_max_pool_after_the_float_first_conv_stays_float_in_the_runtime(tmp_path):
    import onnxruntime as ort

    from fer_runtime.session import DISABLED_OPTIMIZERS

    torch.manual_seed(0)
    model = create_model("vgg", 3, 1, width=0.25, depths=[1, 1, 1, 1]).eval()
    fp32 = export_onnx(model, CONTRACT, tmp_path / "v.onnx")
    images = np.random.default_rng(0).integers(0, 256, (32, 1, 48, 48), dtype=np.uint8)
    int8 = quantize_int8(fp32, tmp_path / "v.int8.onnx", FaceCalibrationReader(images, CONTRACT), keep_float=["first_conv"])

    def optimized(disabled: list[str]) -> onnx.GraphProto:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"opt{len(disabled)}.onnx")
        ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        return onnx.load(options.optimized_model_filepath).graph

    def pool_runs_on_uint8(graph: onnx.GraphProto) -> bool:
        first_q = next(n for n in graph.node if n.op_type == "QuantizeLinear")
        return any(n.op_type == "MaxPool" and first_q.output[0] in n.input for n in graph.node)

    assert pool_runs_on_uint8(optimized([]))  # ORT's default: the Q moves above the pool
    assert not pool_runs_on_uint8(optimized(DISABLED_OPTIMIZERS))
    plain = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    batch = CONTRACT.normalize(images)
    np.testing.assert_array_equal(OnnxModel(int8).run(batch), plain.run(None, {"input": batch})[0])


def test_quantization_prints_nothing_of_its_own(tmp_path, capfd):
    """ORT's histogram calibration prints five lines and logs notes through the root logger: fer-export keeps them out."""
    from fer_train.models import create_model

    torch.manual_seed(0)
    contract = ModelContract(classes=("a", "b", "c"))
    fp32 = export_onnx(create_model("vgg", 3, 1, width=0.125).eval(), contract, tmp_path / "m.onnx")
    capfd.readouterr()
    calib = np.random.default_rng(0).integers(0, 255, (32, 1, 48, 48), dtype=np.uint8)
    quantize_int8(fp32, tmp_path / "m.int8.onnx", FaceCalibrationReader(calib, contract), method="entropy")
    out = capfd.readouterr()
    assert out.out == "" and out.err == "", out


def test_the_sampler_behind_a_training_prior_is_found_where_it_was_recorded(tmp_path):
    from fer_export.calibrate import training_sampler

    assert training_sampler({"sampler": "balanced"}) == ("balanced", "its contract")
    run = tmp_path / "runs" / "some_run"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"sampler": "sqrt"}')
    assert training_sampler({"source_checkpoint": str(run / "best.pt")})[0] == "sqrt"
    # no run folder here: the shipped recipe that writes the run says it (fer2013_base.toml trains with sqrt sampling,
    # and fer2013.toml, its fine-tune, inherits it)
    sampler, where = training_sampler({"source_checkpoint": "/gone/runs/fer2013_vgg_w025_d1222_kd4_e200/best.pt"})
    assert sampler == "sqrt" and "fer2013_base.toml" in where
    sampler, where = training_sampler({"source_checkpoint": "/gone/runs/fer2013_robust_light_e20/last.pt"})
    assert sampler == "sqrt" and "the recipe fer2013.toml" in where
    assert training_sampler({"source_checkpoint": "/gone/runs/nobody/best.pt"})[0] == "random"


def test_every_command_resolves_the_same_data_root(trained_run, tmp_path, monkeypatch, capsys):
    """One environment, every command that reads data: each names the same FER_DATA_ROOT (the run's and the file's
    own roots exist, so a command that skipped the variable would succeed or name another path)."""
    from click.testing import CliRunner

    from benchmarks.bench import main as bench_main
    from fer_train.evaluate import main as eval_main

    missing = tmp_path / "the_one_root"
    monkeypatch.setenv("FER_DATA_ROOT", str(missing))
    run, _ = trained_run
    errors = {}
    assert train_main(["--epochs", "1", "--out-dir", str(tmp_path / "runs"), "--threads", "1"]) == 2
    errors["fer-train"] = capsys.readouterr().err
    assert eval_main(["--ckpt", str(run / "best.pt"), "--threads", "1"]) == 2
    errors["fer-eval"] = capsys.readouterr().err
    for stage in sorted(STAGE_ARGV):
        assert export_main(_stage_argv(stage, trained_run, tmp_path)) == 2
        errors[f"fer-export ({stage})"] = capsys.readouterr().err
    onnx_path = tmp_path / "m.onnx"  # written by _stage_argv, recording the run's root in its contract
    bench = CliRunner().invoke(bench_main, ["--model", str(onnx_path), "--out-dir", str(tmp_path / "bench")])
    assert bench.exit_code == 2, bench.output
    errors["fer-bench"] = bench.output
    for command, err in errors.items():
        lines = err.strip().splitlines()
        assert len(lines) == 1 and str(missing) in lines[0], (command, lines)


def test_fer_data_root_is_read_in_one_place():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    readers = [str(p.relative_to(repo)) for package in ("fer_runtime", "fer_train", "fer_export", "benchmarks")
               for p in sorted((repo / package).rglob("*.py")) if "FER_DATA_ROOT\"" in p.read_text()
               or "FER_DATA_ROOT'" in p.read_text()]
    assert readers == ["fer_runtime/data/root.py"]
