"""A user's own faces: fine-tuning a shipped model onto their classes, splits that keep a person whole, cross-validation
by people, the data report's leak warnings, and the edge-sized default."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fer_models import MODELS_DIR  # noqa: E402

from fer_export.cli import main as export_main  # noqa: E402
from fer_runtime.contract import read_onnx_contract  # noqa: E402
from fer_runtime.data import DataError, discover  # noqa: E402
from fer_runtime.data.decode import load_split  # noqa: E402
from fer_runtime.data.groups import Grouping, crossing  # noqa: E402
from fer_runtime.data.report import data_report  # noqa: E402
from fer_train.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from fer_train.config import TrainConfig  # noqa: E402
from fer_train.head import class_rows, classifier_of  # noqa: E402
from fer_train.models import create_model, inference_cost  # noqa: E402
from fer_train.onnx_init import model_from_onnx  # noqa: E402
from fer_train.train import main as train_main  # noqa: E402
from tests.conftest import make_image  # noqa: E402

USER_CLASSES = ("anger", "happy", "unicorn")  # CK+'s word for angry, a shared word, a class no shipped model has
TINY = ["--arch", "vgg", "--arch-arg", "width=0.125", "--batch-size", "8", "--no-progress", "--threads", "1", "--amp", "off"]
SUBJECT = r"^(S\d+)_"
TINY_INIT = TINY[4:]  # with --init, whose model brings its own architecture


def write_recordings(root, subjects: int = 6, frames: int = 3, classes=USER_CLASSES, seed: int = 0) -> None:
    """CK+-like names: per subject one recording per class, a few near-identical frames each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for s in range(1, subjects + 1):
            base = make_image(label % 3, rng).astype(np.int16)
            for f in range(frames):
                frame = np.clip(base + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(frame).save(root / name / f"S{s:03d}_{label + 1:03d}_{f + 10:08d}.png")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    write_recordings(root)
    return root


def read_csv(path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def subject_of(source: str, _label: int) -> str:
    return source.split("/")[-1].split("_")[0]


def test_classes_match_by_meaning_across_vocabularies():
    ferplus = read_onnx_contract(MODELS_DIR / "ferplus.onnx").classes
    rows = class_rows(ferplus, ["Anger", "happy", "unicorn", "sadness"])
    assert [None if r is None else ferplus[r] for r in rows] == ["angry", "happy", None, "sad"]
    with pytest.raises(DataError, match="'anger' and 'angry' are one expression"):
        class_rows(ferplus, ["anger", "happy", "angry"])  # two outputs from one row, never told apart


@pytest.mark.parametrize("shipped", ["ferplus", "fer2013"])
def test_init_from_a_shipped_model_keeps_its_rows_adds_new_ones_and_the_export_names_it(shipped, recordings, tmp_path,
                                                                                        capsys):
    args = ["--data-root", str(recordings), "--init", shipped, "--group-by", SUBJECT, "--out-dir", str(tmp_path),
            "--name", "ft", "--epochs", "1", "--lr", "0", "--batch-size", "8", "--no-progress", "--threads", "1",
            "--amp", "off", "--crop-margin", "0.1"]
    assert train_main([*args, "--arch", "mobile", "--std", "0.3"]) == 2  # the init's model and normalisation
    assert "drop --arch, --std" in capsys.readouterr().err and not (tmp_path / "ft").exists()
    assert train_main(args) == 0
    state = load_checkpoint(tmp_path / "ft" / "best.pt")
    model, contract = model_from_checkpoint(state)
    assert contract.classes == USER_CLASSES and contract.crop_margin == 0.1  # how the user's crops frame a face
    source, source_contract, path = model_from_onnx(shipped)
    _, before = classifier_of(source, source_contract.num_classes)
    _, after = classifier_of(model, 3)
    angry, happy = source_contract.classes.index("angry"), source_contract.classes.index("happy")
    # lr 0: the matching rows are the shipped model's own; the new class has a fresh row
    assert torch.equal(after.weight[0], before.weight[angry]) and torch.equal(after.weight[1], before.weight[happy])
    assert not any(torch.equal(after.weight[2], row) for row in before.weight)
    init = contract.provenance["init"]
    assert init["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and "new unicorn" in init["classes"]
    if shipped == "ferplus":  # the exported file says which model it started from
        assert export_main(["--ckpt", str(tmp_path / "ft" / "best.pt"), "--out-dir", str(tmp_path / "ex"),
                            "--name", "mine"]) == 0
        exported = read_onnx_contract(tmp_path / "ex" / "mine" / "model.onnx")
        assert exported.provenance["init"] == init and exported.crop_margin == 0.1


def test_group_splits_and_folds_keep_every_person_whole(recordings):
    manifest = discover(recordings, grouping=Grouping(SUBJECT))
    assert crossing(manifest.splits, subject_of)["crossing"] == 0 and manifest.group_by == SUBJECT
    tests = [discover(recordings, val_split=0.2, grouping=Grouping(SUBJECT, 3, k)) for k in (1, 2, 3)]
    for m in tests:
        assert crossing(m.splits, subject_of)["crossing"] == 0 and set(m.splits) == {"train", "val", "test"}
    held_out = [src for m in tests for src, _ in m.splits["test"]]
    assert len(held_out) == len(set(held_out)) == 6 * 3 * 3  # the folds' test splits partition the data
    # split image by image, the same data puts frames of one recording on both sides
    assert crossing(discover(recordings, val_split=0.3).splits, subject_of)["crossing"] > 0


def test_a_group_pattern_that_misses_is_one_line(recordings, tmp_path, capsys):
    with pytest.raises(DataError, match=r"matches no group in 54 of 54 file paths, e.g. 'S001_001_00000010.png'"):
        discover(recordings, grouping=Grouping(r"^(P\d+)_"))
    code = train_main(["--data-root", str(recordings), "--group-by", "(", "--out-dir", str(tmp_path), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a regular expression" in err[0]
    assert train_main(["--data-root", str(recordings), "--folds", "3", "--out-dir", str(tmp_path), *TINY]) == 2
    assert "give --group-by" in capsys.readouterr().err


def test_cross_validation_reports_each_fold_and_their_mean_and_continues(recordings, tmp_path, capsys):
    args = ["--data-root", str(recordings), "--group-by", SUBJECT, "--folds", "2", "--epochs", "1", "--val-split",
            "0.2", "--out-dir", str(tmp_path), "--name", "cv", *TINY]
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert "fold 2/2 (new)" in out and "MACs a face" in out
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    accuracies = [json.loads((tmp_path / "cv" / f"fold{k}" / "metrics.json").read_text())["test"]["accuracy"] for k in (1, 2)]
    assert [f["accuracy"] for f in cv["per_fold"]] == accuracies
    assert cv["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert cv["std"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    assert sum(f["test_images"] for f in cv["per_fold"]) == 54 and (tmp_path / "cv" / "cv.png").stat().st_size > 0
    assert "mean ± std" in (tmp_path / "cv" / "cv.md").read_text()
    held_out = read_csv(tmp_path / "cv" / "predictions.csv")  # every image once, predicted by the fold that held it out
    fold_rows = {k: read_csv(tmp_path / "cv" / f"fold{k}" / "predictions.csv") for k in (1, 2)}
    assert sorted(r["file"] for r in held_out) == sorted(str(p.relative_to(recordings)) for p in recordings.rglob("*.png"))
    assert held_out == [{"fold": str(k), **{c: r[c] for c in r if c != "split"}}
                        for k in (1, 2) for r in fold_rows[k] if r["split"] == "test"]
    assert {r["split"] for r in fold_rows[1]} == {"val", "test"}
    right = [r["label"] == r["predicted"] for r in held_out]
    assert np.mean(right) == pytest.approx(cv["pooled"]["accuracy"])
    assert all((r["p_label"] == r["p_predicted"]) == ok for r, ok in zip(held_out, right))
    mistakes = sorted((r for r, ok in zip(held_out, right) if not ok), key=lambda r: -float(r["p_predicted"]))[:10]
    assert cv["confident_mistakes"] == [{**r, "fold": int(r["fold"])} for r in mistakes]
    stamp = (tmp_path / "cv" / "fold1" / "best.pt").stat().st_mtime_ns
    assert train_main(args) == 0  # the same command again: both folds are finished and kept
    assert "fold 1/2 (finished)" in capsys.readouterr().out
    assert (tmp_path / "cv" / "fold1" / "best.pt").stat().st_mtime_ns == stamp
    for path in (tmp_path / "cv" / "fold1" / "predictions.csv", tmp_path / "cv" / "predictions.csv"):
        path.unlink()  # as a fold trained by an earlier fer-train: said, and the summary without them
    assert train_main(args) == 0 and "predictions.csv is missing" in capsys.readouterr().out
    assert "confident_mistakes" not in json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert train_main([*args[:-len(TINY)], *TINY, "--seed", "1"]) == 2  # another cross-validation under the name
    assert "differs in --seed" in capsys.readouterr().err
    single = [a for a in args if a not in ("--folds", "2")]
    assert train_main(single) == 2 and "holds a cross-validation" in capsys.readouterr().err  # not "--resume"
    assert export_main(["--ckpt", str(tmp_path / "cv")]) == 2
    assert "is a cross-validation: its models are one per fold" in capsys.readouterr().err


def test_cross_validations_agree_on_the_images_every_one_gets_wrong():
    from benchmarks.scripts.cv_agreement import agreement

    files = ["a/S1_001_01.png", "a/S1_001_02.png", "b/S2_001_01.png", "b/S3_001_01.png"]
    labels = ["a", "a", "b", "b"]
    predicted = [["b", "a", "b", "b"], ["b", "c", "a", "b"], ["c", "a", "c", "a"]]
    runs = [{f: (y, p) for f, y, p in zip(files, labels, run)} for run in predicted]
    result = agreement(runs)
    assert result["accuracy"] == [0.75, 0.25, 0.25]
    assert result["wrong_in_every_run"] == ["a/S1_001_01.png"] and result["their_sequences"] == ["S1_001"]
    assert result["majority_vote_accuracy"] == 0.5  # a 2-1 vote counts, a three-way tie does not
    with pytest.raises(ValueError, match="not over the same images"):
        agreement([runs[0], {f: runs[1][f] for f in files[:3]}])


def test_overwrite_keeps_the_old_run_until_the_new_one_starts(recordings, tmp_path, capsys):
    run = ["--data-root", str(recordings), "--epochs", "1", "--out-dir", str(tmp_path), *TINY]
    cv = [*run, "--group-by", SUBJECT, "--folds", "2", "--val-split", "0.2", "--name", "cv"]
    assert train_main([*run, "--name", "one"]) == 0 and train_main(cv) == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pt")}
    time_before = (tmp_path / "cv" / "cv_time.json").read_text()
    capsys.readouterr()
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")  # found, so refused only as the first fold's model is built
    for typo in (["--name", "one", "--data-root", str(tmp_path / "typo")], ["--name", "one", "--init", "no.onnx"],
                 [*cv[len(run):], "--init", str(junk)], [*cv[len(run):], "--folds", "9"]):
        given = [*run[:-len(TINY)], *TINY_INIT] if "--init" in typo else run
        assert train_main([*given, *typo, "--overwrite"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("fer-train: error:") and "last finished epoch" not in err[-1]  # not the old run's
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pt")} == before and (tmp_path / "cv" / "cv.json").is_file()
    assert (tmp_path / "cv" / "cv_time.json").read_text() == time_before
    assert train_main([*run, "--name", "one", "--overwrite", "--seed", "3"]) == 0
    assert json.loads((tmp_path / "one" / "config.json").read_text())["seed"] == 3


def test_a_cross_validation_that_cannot_start_leaves_nothing_and_goes_on_only_over_the_same_images(tmp_path, capsys):
    data = tmp_path / "data"
    write_recordings(data, subjects=4)
    args = ["--data-root", str(data), "--group-by", SUBJECT, "--epochs", "1", "--val-split", "0.25", "--out-dir",
            str(tmp_path / "runs"), "--name", "cv", *TINY]
    assert train_main([*args, "--folds", "5"]) == 2  # 4 people cannot make 5 folds
    assert "needs at least 5 groups" in capsys.readouterr().err and not (tmp_path / "runs" / "cv").exists()
    assert train_main([*args, "--folds", "2", "--fold", "2"]) == 0  # one fold, in the folds' folder
    out = capsys.readouterr().out
    assert "fold 1 of 2 not finished yet" in out and (tmp_path / "runs" / "cv" / "fold2" / "best.pt").is_file()
    write_recordings(data, subjects=5)  # a person more: the folds would be dealt anew
    assert train_main([*args, "--folds", "2"]) == 2
    assert "differs in its image files or their labels" in capsys.readouterr().err
    (data / "anger" / "S005_001_00000010.png").unlink()  # no: the data the folds were dealt from, less a person
    for name in USER_CLASSES:
        for extra in data.glob(f"{name}/S005_*"):
            extra.unlink()
    stamp = (tmp_path / "runs" / "cv" / "fold2" / "best.pt").stat().st_mtime_ns
    assert train_main([*args, "--folds", "2"]) == 0
    assert "fold 2/2 (finished)" in capsys.readouterr().out
    assert (tmp_path / "runs" / "cv" / "fold2" / "best.pt").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "runs" / "cv" / "cv.json").read_text())["seconds"] > 0


def test_overwriting_one_fold_keeps_the_others_and_nothing_trained_leaves_the_folder_alone(recordings, tmp_path, capsys):
    args = ["--data-root", str(recordings), "--group-by", SUBJECT, "--folds", "2", "--epochs", "1", "--val-split",
            "0.2", "--out-dir", str(tmp_path), "--name", "cv", *TINY]
    assert train_main(args) == 0
    summary = (tmp_path / "cv" / "cv.json").read_text()
    stamps = {k: (tmp_path / "cv" / f"fold{k}" / "best.pt").stat().st_mtime_ns for k in (1, 2)}
    assert train_main([*args, "--fold", "2", "--overwrite"]) == 0  # fold 2 again; fold 1 stays
    assert (tmp_path / "cv" / "fold1" / "best.pt").stat().st_mtime_ns == stamps[1]
    assert (tmp_path / "cv" / "fold2" / "best.pt").stat().st_mtime_ns != stamps[2]
    summary = (tmp_path / "cv" / "cv.json").read_text()
    capsys.readouterr()
    assert train_main([*args, "--overwrite", "--stop-after", "0", "--seed", "5"]) == 0  # trains nothing: keeps all
    assert "no fold trained" in capsys.readouterr().out and (tmp_path / "cv" / "cv.json").read_text() == summary
    assert train_main([*args[:-len(TINY) - 2], *TINY, "--overwrite", "--stop-after", "1"]) == 0  # unnamed: cv-DATE
    out = capsys.readouterr().out
    assert "not finished yet: the same command with --name cv-" in out and "without --overwrite goes on" in out


def test_stop_after_ends_a_cross_validation_sitting_across_folds(recordings, tmp_path, capsys):
    args = ["--data-root", str(recordings), "--group-by", SUBJECT, "--folds", "2", "--epochs", "2", "--val-split",
            "0.2", "--out-dir", str(tmp_path), "--name", "cv", *TINY]
    assert train_main([*args, "--stop-after", "3"]) == 0  # fold 1's two epochs and one of fold 2's
    assert "fold 2 of 2 not finished yet" in capsys.readouterr().out and not (tmp_path / "cv" / "cv.json").exists()
    assert load_checkpoint(tmp_path / "cv" / "fold2" / "last.pt")["epoch"] == 1
    assert train_main(args) == 0 and (tmp_path / "cv" / "cv.json").is_file()
    seconds = json.loads((tmp_path / "cv" / "cv.json").read_text())["seconds"]
    assert train_main(args) == 0  # a finished cross-validation again: its time is not reset
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["seconds"] >= seconds


def test_what_cannot_train_is_refused_in_one_line(recordings, tmp_path, capsys):
    one = tmp_path / "one"
    write_recordings(one, classes=("anger",))
    broken = tmp_path / "broken"
    write_recordings(broken)
    for image in (broken / "unicorn").iterdir():
        image.write_bytes(b"not an image")
    cases = {
        ("--data-root", str(one)): "two classes at least",
        ("--data-root", str(broken)): "no readable training image of 'unicorn'",
        ("--data-root", str(recordings), "--epochs", "0"): "--epochs 0 only scores the run given with --resume",
        ("--data-root", str(recordings), "--group-by", SUBJECT, "--folds", "2", "--test-split", "0.2"):
            "--test-split does not go with --folds",
        ("--data-root", str(recordings), "--fold", "2"): "give --folds K with it",
    }
    for given, message in cases.items():
        assert train_main([*given, "--out-dir", str(tmp_path / "runs"), "--name", "x", *TINY]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and not any("Traceback" in line for line in err)
    assert not (tmp_path / "runs" / "x").exists()


def test_a_data_report_is_not_silently_replaced_and_a_run_folder_is_not_a_checkpoint(recordings, tmp_path, capsys):
    report = ["--data-root", str(recordings), "--data-report-only", "--out-dir", str(tmp_path)]
    assert train_main(report) == 0
    first = (tmp_path / "data_report.md").read_text()
    assert train_main(report) == 2 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "data_report.md").read_text() == first and train_main([*report, "--overwrite"]) == 0
    assert export_main(["--ckpt", str(tmp_path), "--out-dir", str(tmp_path / "e")]) == 2
    assert f"{tmp_path} is a folder: give the file" in capsys.readouterr().err
    with pytest.raises(Exception, match="is a folder: give its checkpoint"):
        load_checkpoint(tmp_path)


def test_the_summary_is_the_folds_mean_and_sample_deviation_and_pools_their_confusion():
    from fer_train.cross_validation import summarise, summary_markdown

    def fold(k: int, cm: list[list[int]]) -> dict:
        right, total = sum(cm[i][i] for i in range(2)), sum(map(sum, cm))
        return {"fold": k, "test_images": total, "best_epoch": 3, "accuracy": right / total, "macro_f1": 0.5,
                "balanced_accuracy": 0.5, "val_accuracy": 0.9, "classes": ["a", "b"], "confusion_matrix": cm}

    rows = [fold(1, [[4, 0], [1, 5]]), fold(2, [[2, 2], [0, 6]]), fold(3, [[5, 0], [0, 5]])]
    s = summarise(rows, TrainConfig(folds=3, group_by=SUBJECT, lr=1e-3, freeze=0, monitor="last"), 12.0)
    assert s["mean"]["accuracy"] == pytest.approx(0.9) and s["std"]["accuracy"] == pytest.approx(0.1)
    assert s["pooled"]["confusion_matrix"] == [[11, 2], [1, 16]] and s["pooled"]["accuracy"] == pytest.approx(27 / 30)
    assert "**0.9000 ± 0.1000**" in summary_markdown(s) and "best.pt is its last epoch" in summary_markdown(s)


def test_the_data_report_names_recordings_and_near_copies_across_splits(recordings):
    def report(grouping):
        manifest = discover(recordings, val_split=0.3, grouping=grouping)
        decoded = {s: load_split(manifest, s, 1, (48, 48)) for s in manifest.splits}
        return data_report(manifest, decoded)

    loose = report(None)
    warning = next(w for w in loose["warnings"] if "look like frames of recordings" in w)
    assert "--group-by" in warning and "(train 2, val 1)" in warning
    near = loose["near_duplicates"]["val"]
    val_image, train_image, _ = near["examples"][0]
    assert near["with_near_copy_in_train"] > 0 and val_image.rsplit("_", 1)[0] == train_image.rsplit("_", 1)[0]
    grouped = report(Grouping(SUBJECT))
    assert grouped["near_duplicates"]["val"]["with_near_copy_in_train"] == 0
    assert not [w for w in grouped["warnings"] if "recordings" in w or "near-copies" in w]


def test_the_default_model_is_the_shipped_architecture_and_a_slow_one_is_warned_of():
    assert TrainConfig().arch == "edge"
    shipped = read_onnx_contract(MODELS_DIR / "ferplus.onnx").provenance["model"]
    edge = create_model("edge", 8, 1)
    same = create_model(shipped["name"], 8, 1, **shipped["kwargs"])
    assert [p.shape for p in edge.parameters()] == [p.shape for p in same.parameters()]
    assert inference_cost(edge, 1, (48, 48)).real_time
    slow = inference_cost(create_model("vgg", 8, 1, width=2.0), 1, (48, 48))
    assert not slow.real_time and "not real time" in slow.describe() and "leave --arch out" in slow.warning()


def test_groups_of_one_class_each_still_fill_every_fold():
    """Recordings carry one label each: a group that shares no class with the bins ties on every bin."""
    from fer_runtime.data.groups import assign_groups

    keys = [f"g{c}_{i}" for c in range(7) for i in range(5) for _ in range(3)]
    labels = [c for c in range(7) for _ in range(5) for _ in range(3)]
    assert set(assign_groups(keys, labels, [0.1] * 10, seed=0)) == set(range(10))
    assert sorted(assign_groups(["a", "b", "c"], [0, 1, 2], [1 / 3] * 3, seed=0)) == [0, 1, 2]
    with pytest.raises(DataError, match="one is left empty"):
        assign_groups(["a", "a", "b"], [0, 0, 1], [0.9, 0.05, 0.05], seed=0)


def test_recordings_that_cross_split_folders_are_named(tmp_path):
    """A user's own train/ and val/ folders that cut through recordings: the split folder is not part of the name."""
    write_recordings(tmp_path / "train", subjects=4, frames=2)
    write_recordings(tmp_path / "val", subjects=4, frames=2, seed=1)  # the same names: the same recordings
    manifest = discover(tmp_path)
    decoded = {s: load_split(manifest, s, 1, (48, 48)) for s in manifest.splits}
    warning = next(w for w in data_report(manifest, decoded)["warnings"] if "recordings" in w)
    assert "12 of 12 recordings" in warning and "anger/S001_001 (train 2, val 2)" in warning
    assert discover(tmp_path, grouping=Grouping(SUBJECT)).group_by == SUBJECT
    with pytest.raises(DataError, match="matches no group in 24 of 24 file paths"):  # the user's own split folders too
        discover(tmp_path, grouping=Grouping(r"^(XX\d+)_"))


def test_what_discovery_leaves_out_is_said_and_a_face_filed_twice_is_warned_of(tmp_path):
    write_recordings(tmp_path, subjects=3)
    (tmp_path / "stray.png").write_bytes((tmp_path / "happy" / "S001_002_00000010.png").read_bytes())
    (tmp_path / "happy" / "S009_002_00000010").write_bytes(b"an image saved without its extension")
    (tmp_path / "happy" / "Thumbs.db").write_bytes(b"a file manager's")
    twice = tmp_path / "anger" / "S001_001_00000010.png"
    (tmp_path / "happy" / "S007_002_00000099.png").write_bytes(twice.read_bytes())  # one face, two labels
    with pytest.warns(UserWarning) as caught:
        manifest = discover(tmp_path)
    said = " | ".join(str(w.message) for w in caught)
    assert "1 images directly in" in said and "(e.g. stray.png) are in no class folder" in said
    assert "1 files without an image extension left out (e.g. S009_002_00000010;" in said and "Thumbs" not in said
    decoded = {"train": load_split(manifest, "train", 1, (48, 48))}
    assert any("carry different labels" in w for w in data_report(manifest, decoded)["warnings"])


def test_old_runs_resume_unfrozen_and_options_that_cannot_meet_are_refused(recordings, tmp_path, capsys):
    assert TrainConfig.from_saved({"init": "ferplus"}).freeze == 0  # a run saved before --freeze existed
    assert train_main(["--data-root", str(recordings), "--init", "ferplus", "--patience", "3", "--out-dir",
                       str(tmp_path), *TINY_INIT]) == 2
    assert "--monitor last keeps every epoch" in capsys.readouterr().err
    assert train_main(["--data-root", str(recordings), "--group-by", SUBJECT, "--folds", "3", "--data-report-only",
                       "--out-dir", str(tmp_path / "report")]) == 0  # a cross-validation's data, reported as one split
    assert (tmp_path / "report" / "data_report.md").is_file()
