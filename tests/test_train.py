from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_train import engine
from fer_train.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from fer_train.engine import ModelEma
from fer_train.evaluate import main as eval_main
from fer_train.models import VGGNet, create_model
from fer_train.train import main as train_main

TINY = ["--arch", "vgg", "--arch-arg", "width=0.125", "--batch-size", "8", "--no-progress", "--threads", "1",
        "--amp", "off", "--lr", "3e-3"]


def _train(root, out, name, *extra):
    args = ["--data-root", str(root), "--out-dir", str(out), "--name", name, *TINY, *extra]
    assert train_main(args) == 0
    return out / name


def test_train_writes_run_folder_and_learns(tree_factory, tmp_path):
    run = _train(tree_factory("train-val-test", per_class=32), tmp_path, "r", "--epochs", "6", "--ema", "0.9")
    for f in ("best.pt", "last.pt", "config.json", "split_manifest.json", "history.json", "metrics.json",
              "metrics.md", "confusion_matrix.png", "curves.png", "skipped_files.txt"):
        assert (run / f).is_file(), f
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.6  # 3 classes, chance is 1/3
    assert len(json.loads((run / "history.json").read_text())) == 6
    state = load_checkpoint(run / "best.pt")
    assert state["contract"]["classes"] == ["angry", "happy", "sad"]
    assert state["model"] == {"name": "vgg", "kwargs": {"width": 0.125}}
    # best.pt: what evaluation and export need; the optimizer state (twice the weights) only in last.pt
    last = load_checkpoint(run / "last.pt")
    assert "optimizer" not in state and "rng_state" not in state and last["optimizer"] is not None
    assert (run / "best.pt").stat().st_size < (run / "last.pt").stat().st_size


def test_best_pt_evaluates_but_does_not_resume(tree_factory, tmp_path, capsys):
    run = _train(tree_factory("train-val-test", per_class=8), tmp_path, "b", "--epochs", "2")
    capsys.readouterr()
    assert train_main(["--resume", str(run / "best.pt"), "--epochs", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no optimizer state" in err[0] and "last.pt" in err[0], err
    assert train_main(["--resume", str(run / "last.pt"), "--epochs", "3"]) == 0


def test_the_final_report_scores_best_pt_in_fp32(tree_factory, tmp_path, monkeypatch):
    """The figure of record is the one fer-eval and fer-export give: fp32, not the bf16 autocast of training."""
    from fer_train import run_folder
    from fer_train import train as train_module

    amps = []

    def spy(real):
        def recorded(*args, **kwargs):
            amps.append(kwargs.get("amp"))
            return real(*args, **kwargs)
        return recorded

    monkeypatch.setattr(train_module, "evaluate", spy(train_module.evaluate))  # each epoch's validation
    monkeypatch.setattr(run_folder, "predict_logits", spy(run_folder.predict_logits))  # the final report's
    args = ["--data-root", str(tree_factory("train-val-test", per_class=4)), "--out-dir", str(tmp_path), "--name", "a",
            *[a if a != "off" else "bf16" for a in TINY], "--epochs", "1"]
    assert train_main(args) == 0
    assert amps == ["bf16", "off", "off"]  # the epoch's validation, then best.pt on val and test


def test_progress_bars_only_on_a_terminal(monkeypatch):
    from fer_train.placement import progress_wanted

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not progress_wanted(False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert progress_wanted(False) and not progress_wanted(True)


@pytest.mark.parametrize("layout", [[], ["--channels-last"]], ids=["nchw", "channels-last"])
def test_resume_is_exact(tree_factory, tmp_path, layout):
    root = tree_factory("train-val-test", per_class=12)
    recipe = ["--epochs", "3", "--ema", "0.9", "--sampler", "sqrt", "--mixup", "0.4", "--erasing", "0.5", *layout]
    a = load_checkpoint(_train(root, tmp_path, "straight", *recipe) / "last.pt")
    part = _train(root, tmp_path, "part", *recipe, "--stop-after", "2")  # a sitting that ends early
    assert load_checkpoint(part / "last.pt")["epoch"] == 2
    assert train_main(["--resume", str(part / "last.pt"), "--epochs", "0"]) == 0  # only evaluates: still unfinished
    assert json.loads((part / "metrics.json").read_text())["complete"] is False
    assert train_main(["--resume", str(part / "last.pt")]) == 0
    assert json.loads((part / "metrics.json").read_text())["complete"] is True
    assert train_main(["--resume", str(part / "best.pt"), "--epochs", "0"]) == 0  # best.pt may be an earlier epoch
    assert json.loads((part / "metrics.json").read_text())["complete"] is True
    b = load_checkpoint(part / "last.pt")
    assert b["epoch"] == 3
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for key in a["ema_state_dict"]:
        assert torch.equal(a["ema_state_dict"][key], b["ema_state_dict"][key]), key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert all(t.is_contiguous() for t in b["state_dict"].values())  # loads like an NCHW checkpoint
    assert train_main(["--resume", str(part / "last.pt"), "--epochs", "5", "--stop-after", "1"]) == 0  # extended
    assert train_main(["--resume", str(part / "last.pt"), "--epochs", "0"]) == 0
    assert json.loads((part / "metrics.json").read_text())["complete"] is False  # 4 of 5: no longer finished


def test_one_rule_says_whether_a_run_is_new_started_or_finished(tmp_path, capsys):
    """fer-train's eval-only resume, fer-export --resume and make models all ask fer_train.run_status."""
    from fer_train.run_status import finished, main, run_status

    run = tmp_path / "r"
    assert run_status(run) == "new"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    assert run_status(run) == "started"
    (run / "metrics.json").write_text(json.dumps({"complete": False, "epochs": 3}))  # a --stop-after sitting
    assert run_status(run) == "started"
    (run / "metrics.json").write_text(json.dumps({"complete": True, "epochs": 3}))
    assert run_status(run) == "finished" and finished(run, planned=3)
    assert not finished(run, planned=5, epoch=3)  # resumed with a larger --epochs
    assert finished(tmp_path / "no-metrics", planned=5, epoch=5) and not finished(tmp_path / "no-metrics")
    assert main([str(run)]) == 0 and capsys.readouterr().out == "finished\n"


def test_tensorboard_opens_one_writer_per_sitting(tree_factory, tmp_path, monkeypatch):
    import types

    opened, scalars = [], []

    class Writer:
        def __init__(self, folder: str) -> None:
            opened.append(folder)

        def add_scalar(self, key: str, value: float, step: int) -> None:
            scalars.append((key, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    run = _train(tree_factory("train-val-test", per_class=4), tmp_path, "tb", "--epochs", "2")
    assert opened == [str(run / "tb")] and {step for _, step in scalars} == {1, 2} and ("val_loss", 2) in scalars
    assert train_main(["--resume", str(run / "last.pt"), "--epochs", "0"]) == 0
    assert len(opened) == 1  # an eval-only sitting adds no events file


def test_options_come_from_defaults_then_the_resumed_run_then_the_recipe_then_the_flags(tmp_path, monkeypatch):
    """The precedence, and the one data-root rule: --data-root (flag or recipe), then FER_DATA_ROOT, then the run's."""
    from fer_runtime.options import load_recipe
    from fer_train.config import TrainConfig
    from fer_train.run_config import merged_config

    saved = TrainConfig(data_root="/saved", lr=0.1, epochs=7, ema=0.9, arch_arg=["width=0.5"])
    recipe = tmp_path / "r.toml"
    recipe.write_text("lr = 0.2\nepochs = 9\n")
    monkeypatch.delenv("FER_DATA_ROOT", raising=False)
    cfg = merged_config({**load_recipe(recipe, TrainConfig), "lr": 0.3}, saved)
    assert (cfg.lr, cfg.epochs, cfg.ema, cfg.arch_arg, cfg.data_root) == (0.3, 9, 0.9, ["width=0.5"], "/saved")
    assert (cfg.weight_decay, cfg.mean, cfg.std) == (0.05, [0.5], [0.5])  # decided by --opt and --channels
    assert saved.weight_decay is None and saved.data_root == "/saved"  # resolved into a new config, not in place
    monkeypatch.setenv("FER_DATA_ROOT", "/env")
    assert merged_config({}, saved).data_root == "/env"
    assert merged_config({"data_root": "/given"}, saved).data_root == "/given"
    sgd = merged_config({"opt": "sgd", "channels": 3}, None)
    assert (sgd.lr, sgd.weight_decay, sgd.mean, sgd.data_root) == (0.05, 5e-4, [0.5] * 3, "/env")


def test_data_report_only_writes_the_report_and_no_run(tree_factory, tmp_path, capsys):
    root = tree_factory("train-val-test", per_class=4)
    out = tmp_path / "o"
    assert train_main(["--data-root", str(root), "--out-dir", str(out), "--data-report-only", "--epochs", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["data_report.json", "data_report.md"]
    report = json.loads((out / "data_report.json").read_text())
    assert report["root"] == str(root) and sum(report["images_per_class"]["train"].values()) == 12  # train decoded too
    assert f"fer-train: data report in {out / 'data_report.json'}" in capsys.readouterr().out


def test_a_recipe_names_its_base_and_changes_only_its_keys(tmp_path):
    from fer_runtime.options import load_recipe
    from fer_train.config import TrainConfig

    (tmp_path / "base.toml").write_text('arch = "vgg"\narch_arg = ["width=0.375"]\nepochs = 50\n')
    (tmp_path / "exp.toml").write_text('base = "base.toml"\narch_arg = ["width=0.25"]\n')
    assert load_recipe(tmp_path / "exp.toml", TrainConfig) == {"arch": "vgg", "arch_arg": ["width=0.25"], "epochs": 50}


def test_recipe_and_saved_values_are_checked_as_the_command_line_checks_them(tmp_path):
    from fer_runtime.options import OptionError, load_recipe
    from fer_train.config import TrainConfig

    for text, said in [('amp = "fp32"', "amp"), ('monitor = "f1"', "monitor"), ('epochs = "many"', "epochs"),
                       ('arch = ["vgg", "mobile"]', "takes one value"), ("epochs = 30.7", "not a valid int"),
                       ("strict = 1", "not a valid bool"), ("batch_size = true", "not a valid int")]:
        (tmp_path / "r.toml").write_text(text + "\n")
        with pytest.raises(OptionError, match=f"r.toml: .*{said}"):
            load_recipe(tmp_path / "r.toml", TrainConfig)
    (tmp_path / "r.toml").write_text('lr = "0.001"\nchannels = 3\nteacher = "t.pt"\n')
    assert load_recipe(tmp_path / "r.toml", TrainConfig) == {"lr": 0.001, "channels": 3, "teacher": ["t.pt"]}
    with pytest.raises(OptionError, match="the run's saved config: sampler"):
        TrainConfig.from_saved({"sampler": "oversample", "not_known_any_more": 1})


def test_recipes_that_name_each_other_as_base_are_one_error(tmp_path):
    from fer_runtime.options import OptionError, load_recipe
    from fer_train.config import TrainConfig

    (tmp_path / "a.toml").write_text('base = "b.toml"\nepochs = 1\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\nepochs = 2\n')
    with pytest.raises(OptionError, match="leads back to itself"):
        load_recipe(tmp_path / "a.toml", TrainConfig)


def test_eval_only_resume_and_fer_eval_rebuild_saved_architecture(tree_factory, tmp_path, capsys):
    root = tree_factory("train-val-test", per_class=12)
    run = _train(root, tmp_path, "r", "--epochs", "2", "--arch-arg", "depths=1")
    state = load_checkpoint(run / "best.pt")
    model, contract = model_from_checkpoint(state)
    assert isinstance(model, VGGNet)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 4  # depths=1, not the default 2
    assert train_main(["--resume", str(run / "last.pt"), "--epochs", "0"]) == 0
    assert eval_main(["--ckpt", str(run / "best.pt"), "--split", "test", "--tta", "tencrop"]) == 0
    out = json.loads((run / "eval_test_tencrop.json").read_text())
    assert out["classes"] == list(contract.classes) and out["num_samples"] == 36


def test_fer2013_protocol_training_selects_on_public(tree_factory, tmp_path):
    root = tree_factory("fer2013", per_class=12)
    run = _train(root, tmp_path, "f", "--epochs", "1", "--protocol", "fer2013")
    manifest = json.loads((run / "split_manifest.json").read_text())
    assert all("PublicTest_" in p for p, _ in manifest["splits"]["val"])
    assert all("PrivateTest_" in p for p, _ in manifest["splits"]["test"])


def test_test_set_never_used_for_selection_without_val(tree_factory, tmp_path, capsys):
    root = tree_factory("train-test", per_class=12)
    run = _train(root, tmp_path, "t", "--epochs", "1")
    assert "doubles as validation" in capsys.readouterr().err
    assert any("doubles as validation" in n for n in json.loads((run / "metrics.json").read_text())["notes"])


def test_ema_handles_integer_buffers():
    model = create_model("vgg", 3, 1, width=0.125)
    ema = ModelEma(model, 0.5)
    model.train()
    model(torch.randn(4, 1, 48, 48))
    ema.update(model)
    bn = [m for m in ema.module.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    assert bn.num_batches_tracked.dtype == torch.int64 and int(bn.num_batches_tracked) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data-root", "/nonexistent/x"], "data root not found"),
        (["--arch", "nope"], "unknown architecture"),
        (["--arch", "timm:not_a_model"], "unknown timm model"),
        (["--val-split", "1.5"], "[0, 1)"),
        (["--pretrained", "/nonexistent/w.pt"], "not found"),
    ],
)
def test_bad_input_one_line_nonzero(tree_factory, tmp_path, capsys, args, message):
    root = tree_factory("class-folders")
    full = ["--data-root", str(root), "--out-dir", str(tmp_path / "o"), "--epochs", "1", "--no-progress", *args]
    assert train_main(full) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.pt"))


def test_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "x.pt"
    bogus.write_text("{}")
    with pytest.raises(CheckpointError, match="not a fer-train checkpoint"):
        load_checkpoint(bogus)
    torch.save({"weights": torch.zeros(1)}, bogus)
    with pytest.raises(CheckpointError, match="no 'fer-checkpoint' marker"):
        load_checkpoint(bogus)
    assert eval_main(["--ckpt", str(bogus)]) == 2
    assert "not a fer-train checkpoint" in capsys.readouterr().err


def test_timm_model_by_name():
    timm = pytest.importorskip("timm")
    assert timm
    model = create_model("timm:resnet10t", num_classes=7, in_chans=1)
    assert model(torch.randn(2, 1, 48, 48)).shape == (2, 7)


def test_ddp_two_processes_gloo(tree_factory, tmp_path):
    root = tree_factory("train-val-test", per_class=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "fer_train", "--data-root", str(root), "--out-dir", str(tmp_path), "--name", "ddp", "--epochs", "2",
           *TINY]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert state["train_args"]["data_root"] == str(root)
    history = state["history"]
    # each rank sees half of the 24 training images per epoch
    assert len(history) == 2 and history[0]["train_samples"] == 12
    assert (tmp_path / "ddp" / "metrics.json").exists()


def test_fer_eval_ensemble_averages_member_probabilities(tree_factory, tmp_path, capsys):
    from fer_runtime.data import SplitManifest, load_split
    from fer_train.engine import predict_logits

    root = tree_factory("train-val-test", per_class=24)
    runs = [_train(root, tmp_path, f"e{seed}", "--epochs", "4", "--seed", str(seed)) for seed in (0, 1)]
    ckpts = [str(r / "best.pt") for r in runs]
    assert eval_main(["--ckpt", ckpts[0], "--ckpt", ckpts[1], "--split", "test", "--tta", "flip"]) == 0
    out = json.loads((runs[0] / "eval_test_flip_ensemble2.json").read_text())
    assert out["checkpoints"] == [str(Path(c).resolve()) for c in ckpts]

    states = [load_checkpoint(c) for c in ckpts]
    data = load_split(SplitManifest.from_dict(states[0]["manifest"]), "test", 1, (48, 48))
    images = torch.from_numpy(data.images)
    members = [model_from_checkpoint(s) for s in states]
    probs = torch.stack([predict_logits(m, images, c, torch.device("cpu"), tta="flip").softmax(1) for m, c in members])
    mean = probs.mean(0)
    assert out["accuracy"] == pytest.approx(float((mean.argmax(1).numpy() == data.labels).mean()))
    expected_loss = torch.nn.functional.nll_loss(mean.log(), torch.from_numpy(data.labels)).item()
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert not torch.allclose(probs[0], probs[1])  # two different members, so the mean is a real ensemble
    with open(runs[0] / "eval_test_flip_ensemble2_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = list(members[0][1].classes)
    assert [r["file"] for r in rows] == data.paths
    assert [classes.index(r["predicted"]) for r in rows] == mean.argmax(1).tolist()
    assert [float(r["p_label"]) for r in rows] == pytest.approx(mean[range(len(rows)), data.labels].tolist(), abs=1e-4)

    from tests.conftest import write_class_tree

    write_class_tree(tmp_path / "other", 12, np.random.default_rng(0), classes=("a", "b"))
    mismatched = _train(tmp_path / "other", tmp_path, "o", "--epochs", "1")
    capsys.readouterr()
    assert eval_main(["--ckpt", ckpts[0], "--ckpt", str(mismatched / "best.pt")]) == 2
    assert "does not share classes" in capsys.readouterr().err


def test_amp_auto_avoids_emulated_bf16(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    assert engine.resolve_amp("auto", cpu) == "off"
    assert engine.resolve_amp("auto", cuda) == "fp16"
    assert engine.resolve_amp("bf16", cpu) == "bf16"  # an explicit choice is kept (fer-train warns)
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    assert engine.resolve_amp("auto", cpu) == "bf16"


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux CPU flags")
def test_native_bf16_detection_agrees_with_cpu_flags():
    flags = set(Path("/proc/cpuinfo").read_text().split())
    if not flags & {"avx512_bf16", "amx_bf16"}:
        assert not engine.cpu_has_native_bf16()


def test_recipe_files_set_options_and_flags_override_them(tree_factory, tmp_path, capsys):
    from fer_runtime.options import load_recipe
    from fer_train.config import TrainConfig
    from fer_train.train import main as train_main

    root = Path(__file__).resolve().parents[1]
    recipes = sorted((root / "models" / "recipes").glob("*.toml"))
    assert {p.stem for p in recipes} >= {"ferplus", "fer2013"} and len(recipes) <= 6  # shipped models, stage 1s, teachers
    for path in recipes:
        assert TrainConfig(**load_recipe(path, TrainConfig))  # every key a TrainConfig field
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'data_root = "{tree_factory("train-val-test")}"\narch = "vgg"\narch_arg = ["width=0.125"]\n'
                      f'epochs = 3\nbatch_size = 8\nlr = 3e-3\nname = "from_recipe"\nout_dir = "{tmp_path}"\n'
                      'amp = "off"\nno_progress = true\n')
    assert train_main(["--config", str(recipe), "--epochs", "1"]) == 0
    config = json.loads((tmp_path / "from_recipe" / "config.json").read_text())
    assert (config["epochs"], config["lr"], config["arch_arg"], config["batch_size"]) == (1, 3e-3, ["width=0.125"], 8)
    recipe.write_text(recipe.read_text() + "learning_rate = 1\n")
    assert train_main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fer-train: error: {recipe}: unknown option(s) learning_rate"]


def test_help_shows_every_default_from_train_config(capsys):
    from fer_train.train import main as train_main

    assert train_main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs INTEGER training epochs (0 with --resume: only evaluate) [default: (30; 20 with --init)]" in text
    assert "--teacher MODEL" in text and "--arch-arg KEY=VALUE" in text


def test_an_older_checkpoint_contract_upgrades_unless_it_used_retired_conditioning():
    from fer_runtime.contract import CONTRACT_VERSION, ContractError
    from fer_train.checkpoint import upgraded_contract

    v1 = {"classes": ["a", "b"], "input_size": [48, 48], "channels": 1, "mean": [0.5], "std": [0.5], "output": "logits",
          "crop_margin": 0.1, "input_blur": 0.0, "input_deconv": 0.0, "provenance": {}, "version": 1}
    up = upgraded_contract(v1)
    assert up["version"] == CONTRACT_VERSION and "input_blur" not in up and up["classes"] == ["a", "b"]
    with pytest.raises(ContractError, match="no longer supports"):
        upgraded_contract({**v1, "input_blur": 3.25, "input_deconv": 3e-4, "version": 2})
