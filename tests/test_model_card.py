"""benchmarks/model_card.py writes the card from the build's files: every figure comes from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import model_card

CLASSES = {"ferplus": ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"],
           "fer2013": ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]}


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _run(root: Path, name: str, protocol: str, accuracy: float, **config: object) -> str:
    run = f"runs/{name}"
    arch = {} if "model" in config else {"arch": "vgg", "arch_arg": ["width=0.3"]}
    _write(root / run / "config.json", {"protocol": protocol, **arch, "threads": 1, "amp_resolved": "bf16", **config})
    _write(root / run / "history.json", [{"train_seconds": 60.0}, {"train_seconds": 120.0}])
    _write(root / run / "metrics.json", {"best": {"metric": "accuracy", "value": accuracy, "epoch": 2}})
    recipe = root / "models" / "recipes" / f"{name}_recipe.toml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(f'# the recipe\narch = "vgg"\nname = "{name}"\n')
    return run


def _build(root: Path, key: str, kd: str | None) -> None:
    """A run, its export and its benches; ``kd``: "runs" (distilled from teacher runs), "targets" (from a stored
    teacher-targets file) or None."""
    classes = CLASSES[key]
    (root / "models").mkdir(exist_ok=True)
    config = {}
    if kd == "runs":
        teacher = _run(root, f"teacher_{key}", key, 0.9123, arch="vgg", arch_arg=["width=0.75"])
        _write(root / teacher / "eval_test_flip.json", {"accuracy": 0.8912, "macro_f1": 0.7345})
        # a second member from before fer-train's --model became --arch, with no test figure of its own
        other = _run(root, f"other_{key}", key, 0.8790, model="vgg", model_arg=["width=0.375"])
        config = {"teacher": [f"{teacher}/best.pt", f"{other}/best.pt"], "teacher_tta": "flip",
                  "teacher_targets": "cached", "kd_alpha": 0.7, "kd_temperature": 4.0}
    elif kd == "targets":
        targets = root / "models" / "teacher_targets" / f"{key}.npz"
        targets.parent.mkdir(parents=True, exist_ok=True)
        np.savez(targets, teachers=np.array(["t_s0 (exports/t_s0/model.onnx)", "t_s1 (exports/t_s1/model.onnx)"]),
                 tta=np.array("flip"))
        config = {"teacher_targets_file": f"models/teacher_targets/{key}.npz", "kd_alpha": 0.5, "kd_temperature": 2.0}
    run = _run(root, f"student_{key}", key, 0.8811, **config)
    _write(
        root / "exports" / key / "export_report.json",
        {
            "source": f"{run}/best.pt",
            "artefacts": [{"name": "pytorch", "params": 585496, "macs": 41.8e6}],
            "decision_rule": {"onnx int8": {"prior_correction": 0.3, "accuracy_floor": 0.8712, "grid": []}},
        },
    )
    row = {"file_kb": 605.9, "params": 585496, "temperature": 0.9, "prior_correction": 0.3,
           "quality": {"accuracy": 0.8765, "macro_f1": 0.7012, "balanced_accuracy": 0.7234, "classes": classes,
                       "per_class": {c: {"f1": 0.1 * (i + 1), "recall": 0.05 * (i + 1)} for i, c in enumerate(classes)},
                       "confusion_matrix": [[7] * len(classes)] * len(classes)},
           "quality_train_prior": {"accuracy": 0.8801, "macro_f1": 0.6512, "balanced_accuracy": 0.6345},
           "calibration": {"ece_before": 0.03, "ece_after": 0.01},
           "latency_b1_1thread": {"p50_ms": 0.291, "p95_ms": 0.407}, "throughput_b32_img_per_s": 3000.0}
    _write(
        root / "benchmarks" / "results" / key / "results.json",
        {
            "data": {"classes": classes, "images": 3137},
            "machine": {"cpu": "Test CPU", "cores": 2, "cpu_features": ["avx2"]},
            "models": {f"{key}.int8.onnx": row, "fer package INT8 (TFLite)": {"file_kb": 91.0, "note": "no contempt"}},
        },
    )
    machine = {"cpu": "Test CPU", "cores": 2}
    ck = {"data": {"classes": ["angry", "contempt", "happy"], "images": 981}, "machine": machine, "models": {}}
    if (root / "benchmarks" / "results" / "ckplus" / "results.json").is_file():
        ck = json.loads((root / "benchmarks" / "results" / "ckplus" / "results.json").read_text())
    ck["models"][f"{key}.int8.onnx"] = {
        "quality": {
            "num_samples": 981 if key == "ferplus" else 927,
            "accuracy": 0.7012,
            "macro_f1": 0.6512,
            "balanced_accuracy": 0.6611,
            "per_class": {c: {"recall": 0.5} for c in ["angry", "contempt", "happy"] if key == "ferplus" or c != "contempt"},
        }
    }
    _write(root / "benchmarks" / "results" / "ckplus" / "results.json", ck)
    for folder, features, p50 in (("latency_native", ["avx2", "avx512f"], 0.2), ("latency_avx2", ["avx2"], 0.3)):
        path = root / "benchmarks" / "results" / folder / "results.json"
        lat = (
            json.loads(path.read_text())
            if path.is_file()
            else {
                "machine": {**machine, "cpu_features": features},
                "models": {"fer package (INT8 TFLite)": {"latency_b1_1thread": {"p50_ms": 0.4}}},
            }
        )
        lat["models"][f"{key}.int8.onnx"] = {"latency_b1_1thread": {"p50_ms": p50}}
        _write(path, lat)
    for suffix, p50 in (("", 0.2), ("_avx2", 0.3)):
        timed = {"quality": {"accuracy": 0.8701, "macro_f1": 0.7012}, "file_kb": 450.1, "latency_b1_1thread": {"p50_ms": p50},
                 "throughput_b32_img_per_s": 3000.0}
        models = {"model.int8.onnx": {**timed, "runtime": "ONNX Runtime 1.23.2 (cpu)"},
                  "model.int8.xml": {**timed, "runtime": "OpenVINO 2026.4.1 (CPU)"}}
        _write(root / "benchmarks" / "results" / f"runtimes_{key}{suffix}" / "results.json",
               {"machine": machine, "models": models, "agreement": {"model.int8.xml vs model.int8.onnx": 0.9987}})


def test_the_card_copies_every_figure_from_the_builds_files(tmp_path):
    _build(tmp_path, "ferplus", kd="runs")
    _build(tmp_path, "fer2013", kd="targets")
    assert model_card.main(tmp_path) == 0
    card = (tmp_path / "models" / "MODEL_CARD.md").read_text()
    assert (
        "| ferplus.int8.onnx | 0.8765 | 0.7012 | 0.7234 | 0.0300 / 0.0100 | 0.9 | 0.3 | 605.9 | 585496 | 0.291 / 0.407 | 3000 |"
    ) in card
    assert "with tau 0.3, chosen on validation" in card and "(floor 0.8712)" in card
    assert "`--prior train`): accuracy 0.8801, macro-F1 0.6512, balanced accuracy 0.6345" in card
    # CK+: each file on the classes it shares with the set; latency natively and on the AVX2 path, one row per file
    assert "| ferplus.int8.onnx | 981 | 0.7012 | 0.6512 | 0.6611 | 0.500 | 0.500 | 0.500 |" in card
    assert "| fer2013.int8.onnx | 927 | 0.7012 | 0.6512 | 0.6611 | 0.500 | - | 0.500 |" in card
    assert "| native | Test CPU: avx2, avx512f | ferplus.int8.onnx | 0.200 | 0.400 | 0.50 |" in card
    assert "| AVX2 code path | Test CPU: avx2 | fer2013.int8.onnx | 0.300 | 0.400 | 0.75 |" in card
    # each model in each runtime's format, natively and on the AVX2 path, with its agreement with its ONNX file
    assert ("| fer2013 | AVX2 code path | model.int8.xml | OpenVINO 2026.4.1 (CPU) | 0.8701 | 0.7012 | 450.1 | 0.300 | 3000 | "
            "0.9987 |") in card
    assert ("| ferplus | native | model.int8.onnx | ONNX Runtime 1.23.2 (cpu) | 0.8701 | 0.7012 | 450.1 | 0.200 | 3000 | "
            "- |") in card
    assert "`fer-export --ckpt runs/student_ferplus/best.pt" in card
    assert "validation (accuracy 0.8811 at epoch 2 of 2)" in card
    assert "2 epochs, 3 min of training steps" in card
    assert "on Test CPU (2 cores, avx2)" in card
    # the hardest classes are the three lowest F1
    assert "Hard classes (the lowest F1 of `ferplus.int8.onnx`): angry (0.100), contempt (0.200), disgust (0.300)" in card
    assert "Recipe: [`models/recipes/student_ferplus_recipe.toml`]" in card
    # the teachers of a distilled student, with their TTA'd test figures; the other one names its stored targets
    assert card.count("Distilled from an ensemble of 2 (the mean of their softmax) (KD alpha 0.7") == 1
    assert (
        "- `runs/teacher_ferplus`: recipe [`models/recipes/teacher_ferplus_recipe.toml`]"
        "(recipes/teacher_ferplus_recipe.toml), `vgg` ['width=0.75'], 2 epochs, 3 min of training steps; "
        "validation accuracy 0.9123 (epoch 2), test (`fer-eval --tta flip`) accuracy 0.8912, macro-F1 0.7345"
    ) in card
    assert "- `runs/other_ferplus`: recipe [`models/recipes/other_ferplus_recipe.toml`]" in card
    assert "`vgg` ['width=0.375']" in card and "validation accuracy 0.8790 (epoch 2)\n" in card
    assert "- fer package INT8 (TFLite): no contempt" in card
    assert (
        card.count(
            "Distilled (KD alpha 0.5, temperature 2.0) from the stored targets [`models/teacher_targets/fer2013.npz`]"
            "(../models/teacher_targets/fer2013.npz): the mean softmax of 2 teachers, TTA flip, on the training "
            "images (`t_s0`, `t_s1`;"
        )
        == 1
    )


@pytest.mark.parametrize("missing, message", [
    ("exports/fer2013/export_report.json", "fer2013/export_report.json is missing: run make models first"),
    ("models/recipes/other_ferplus_recipe.toml", "no recipe in models/recipes/ writes runs/other_ferplus"),
    ("models/teacher_targets/fer2013.npz", "models/teacher_targets/fer2013.npz is missing: the run distilled from it"),
])
def test_a_missing_build_file_or_recipe_is_named_and_no_card_is_written(tmp_path, missing, message):
    _build(tmp_path, "ferplus", kd="runs")
    _build(tmp_path, "fer2013", kd="targets")
    (tmp_path / missing).unlink()
    with pytest.raises(SystemExit, match=message):
        model_card.main(tmp_path)
    assert not (tmp_path / "models" / "MODEL_CARD.md").exists()


def test_a_teacher_targets_file_of_another_kind_is_named_and_no_card_is_written(tmp_path):
    _build(tmp_path, "ferplus", kd=None)
    _build(tmp_path, "fer2013", kd="targets")
    np.savez(tmp_path / "models" / "teacher_targets" / "fer2013.npz", log_probs=np.zeros((2, 7)))
    with pytest.raises(SystemExit, match="models/teacher_targets/fer2013.npz is not a teacher-targets file"):
        model_card.main(tmp_path)
    assert not (tmp_path / "models" / "MODEL_CARD.md").exists()


def test_a_re_export_of_a_shipped_onnx_file_names_its_run_and_says_when_the_run_is_not_here(tmp_path):
    _build(tmp_path, "ferplus", kd=None)
    _build(tmp_path, "fer2013", kd=None)
    _write(tmp_path / "exports" / "fer2013" / "export_report.json",
           {"source": "models/fer2013.onnx", "artefacts": [{"name": "onnx fp32"}],
            "source_provenance": {"source_checkpoint": "/elsewhere/runs/gone_fer2013/best.pt",
                                  "model": {"name": "vgg", "kwargs": {"width": 0.375}}}})
    recipe = tmp_path / "models" / "recipes" / "gone_fer2013.toml"
    recipe.write_text('arch = "vgg"\nname = "gone_fer2013"\n')
    assert model_card.main(tmp_path) == 0
    card = (tmp_path / "models" / "MODEL_CARD.md").read_text()
    assert "`fer-export --model models/fer2013.onnx --int8 --calib-size 512" in card
    assert "Recipe: [`models/recipes/gone_fer2013.toml`]" in card
    assert "Architecture `vgg` {'width': 0.375}. The training run `runs/gone_fer2013` is not on the machine" in card
    assert "Distilled" not in card  # neither model learned from a teacher
