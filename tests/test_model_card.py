"""benchmarks/model_card.py writes the card from the build's files: every figure comes from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import model_card

CLASSES = {"ferplus": ["angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"],
           "fer2013": ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]}  # fmt: skip


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _run(root: Path, name: str, protocol: str, accuracy: float, **config: object) -> str:
    run = f"runs/{name}"
    _write(root / run / "config.json", {"protocol": protocol, "arch": "vgg", "arch_arg": ["width=0.3"], "threads": 1,
                                        "amp_resolved": "bf16", **config})  # fmt: skip
    _write(root / run / "history.json", [{"train_seconds": 60.0}, {"train_seconds": 120.0}])
    _write(root / run / "metrics.json", {"best": {"metric": "accuracy", "value": accuracy, "epoch": 2}})
    return run


def _build(root: Path, key: str, with_teacher: bool) -> None:
    classes = CLASSES[key]
    (root / "models").mkdir(exist_ok=True)
    config = {}
    if with_teacher:
        teacher = _run(root, f"teacher_{key}", key, 0.9123, arch="vgg", arch_arg=["width=0.75"])
        _write(root / teacher / "eval_test_flip.json", {"accuracy": 0.8912, "macro_f1": 0.7345})
        config = {"teacher": [f"{teacher}/best.pt"], "teacher_tta": "flip", "teacher_targets": "cached",
                  "kd_alpha": 0.7, "kd_temperature": 4.0}  # fmt: skip
    run = _run(root, f"student_{key}", key, 0.8811, **config)
    _write(root / "exports" / key / "export_report.json",
           {"source": f"{run}/best.pt", "artefacts": [{"name": "pytorch", "params": 585496, "macs": 41.8e6}]})
    row = {"file_kb": 605.9, "params": 585496, "temperature": 0.9,
           "quality": {"accuracy": 0.8765, "macro_f1": 0.7012, "per_class": {c: {"f1": 0.1 * (i + 1)} for i, c in
                                                                          enumerate(classes)},
                       "confusion_matrix": [[7] * len(classes)] * len(classes)},
           "calibration": {"ece_before": 0.03, "ece_after": 0.01},
           "latency_b1_1thread": {"p50_ms": 0.291, "p95_ms": 0.407}, "throughput_b32_img_per_s": 3000.0}  # fmt: skip
    _write(root / "benchmarks" / "results" / key / "results.json",
           {"data": {"classes": classes, "images": 3137},
            "machine": {"cpu": "Test CPU", "cores": 2, "cpu_features": ["avx2"]},
            "models": {f"{key}.int8.onnx": row, "fer package INT8 (TFLite)": {"file_kb": 91.0, "note": "no contempt"}}})


def test_the_card_copies_every_figure_from_the_builds_files(tmp_path):
    _build(tmp_path, "ferplus", with_teacher=True)
    _build(tmp_path, "fer2013", with_teacher=False)
    assert model_card.main(tmp_path) == 0
    card = (tmp_path / "models" / "MODEL_CARD.md").read_text()
    assert "| ferplus.int8.onnx | 0.8765 | 0.7012 | 0.0300 / 0.0100 | 0.9 | 605.9 | 585496 | 0.291 / 0.407 | 3000 |" in card
    assert "`fer-export --ckpt runs/student_ferplus/best.pt" in card
    assert "validation (accuracy 0.8811 at epoch 2 of 2)" in card
    assert "2 epochs, 3 min of training steps" in card
    assert "on Test CPU (2 cores, avx2)" in card
    # the hardest classes are the three lowest F1
    assert "Hard classes (the lowest F1 of `ferplus.int8.onnx`): angry (0.100), contempt (0.200), disgust (0.300)" in card
    # the teacher of a distilled student, with its TTA'd test figure; the undistilled model has no teacher line
    assert card.count("Distilled (KD alpha 0.7") == 1
    assert "from the teacher `runs/teacher_ferplus`" in card and "test (`fer-eval --tta flip`) accuracy 0.8912" in card
    assert "- fer package INT8 (TFLite): no contempt" in card


def test_a_missing_build_file_is_named(tmp_path):
    _build(tmp_path, "ferplus", with_teacher=True)
    _build(tmp_path, "fer2013", with_teacher=False)
    (tmp_path / "runs" / "teacher_ferplus" / "eval_test_flip.json").unlink()
    with pytest.raises(SystemExit, match="eval_test_flip.json is missing: run make models first"):
        model_card.main(tmp_path)
    assert not (tmp_path / "models" / "MODEL_CARD.md").exists()
