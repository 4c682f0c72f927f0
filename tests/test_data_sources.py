"""The Kaggle CSV, FER+ (folders and CSV), its label rules, soft targets, the data report and bad input."""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest

from fer_runtime.contract import ModelContract
from fer_runtime.data import DataError, DecodedSplit, discover, load_split, read_image
from fer_runtime.data.ferplus import CLASSES as FERPLUS_CLASSES
from fer_runtime.data.ferplus import vote_target
from fer_runtime.data.report import duplicate_summary, has_copy_in

CODES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # the challenge's emotion codes 0-6


def _face(code: int, i: int) -> np.ndarray:
    """A 48x48 face whose pixels say which code and row it came from."""
    img = np.full((48, 48), 10 * code, np.uint8)
    img[0, 0] = i % 256
    img[1, :] = 255 - 30 * code
    return img


def write_fer2013_csv(path, rows, spaces: bool = False):
    """rows: (code, usage[, image]) -> a Kaggle-style CSV; ``spaces`` gives icml_face_data.csv's header."""
    names = ["emotion", "Usage", "pixels"] if spaces else ["emotion", "pixels", "Usage"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([" " + n if spaces and n != "emotion" else n for n in names])
        for i, (code, usage, *img) in enumerate(rows):
            pixels = " ".join(map(str, (img[0] if img else _face(code, i)).ravel().tolist()))
            cells = {"emotion": str(code), "Usage": usage, "pixels": pixels}
            w.writerow([cells[n] for n in names])
    return path


def _standard_rows(per_code: int = 2):
    return [(code, usage) for usage in ("Training", "Training", "PublicTest", "PrivateTest")
            for code in range(7) for _ in range(per_code)]


@pytest.mark.parametrize("spaces", [False, True], ids=["fer2013.csv", "icml_face_data.csv"])
def test_kaggle_csv_maps_emotion_codes_to_names_not_to_alphabetical_order(tmp_path, spaces):
    name = "icml_face_data.csv" if spaces else "fer2013.csv"
    rows = _standard_rows()
    path = write_fer2013_csv(tmp_path / name, rows, spaces=spaces)
    m = discover(path)  # the CSV alone is enough
    assert m.protocol == "fer2013" and m.classes == sorted(CODES)
    assert [len(m.splits[s]) for s in ("train", "val", "test")] == [28, 14, 14]
    for split in ("train", "test"):
        d = load_split(m, split, 1, (48, 48))
        for (source, label), img in zip(m.splits[split], d.images):
            row = int(source.split("#")[1])
            code = rows[row][0]
            # code 4 is Sad and 6 Neutral; the alphabetical folder order would call code 4 "neutral"
            assert m.classes[label] == CODES[code]
            np.testing.assert_array_equal(img[0], _face(code, row))
    sad = [label for source, label in m.splits["train"] if rows[int(source.split("#")[1])][0] == 4]
    assert {m.classes[y] for y in sad} == {"sad"}


def test_the_csv_trains_from_data_root_alone_and_writes_a_data_report(tmp_path):
    from fer_train.train import main as train_main

    rows = _standard_rows(3)
    rows[-1] = (rows[0][0], "PrivateTest", _face(rows[0][0], 0))  # a test image identical to training row 0
    path = write_fer2013_csv(tmp_path / "fer2013.csv", rows)
    args = ["--data-root", str(path), "--out-dir", str(tmp_path / "runs"), "--name", "r", "--arch", "vgg",
            "--arch-arg", "width=0.125", "--epochs", "1", "--batch-size", "16", "--no-progress", "--amp", "off",
            "--threads", "1"]
    assert train_main(args) == 0
    report = json.loads((tmp_path / "runs" / "r" / "data_report.json").read_text())
    assert report["protocol"] == "fer2013" and report["layout"] == "fer2013-csv"
    assert report["duplicates"]["test"]["with_copy_in_train"] == 1
    assert report["formats"]["train"] == {"48x48 gray": 42}
    assert "pixel-identical copy in train" in (tmp_path / "runs" / "r" / "data_report.md").read_text()


# --------------------------------------------------------------------------- FER+

VOTE_HEADER = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]


def _dist(**kw) -> list[float]:
    out = [0.0] * len(FERPLUS_CLASSES)
    for name, value in kw.items():
        out[FERPLUS_CLASSES.index(name)] = value
    return out


# votes (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF) -> hand-computed
RULES = [
    # single votes (sadness 1) are dropped; 4 of 9 remaining is no majority; 4+3 reach 75% of 9
    ([4, 0, 0, 1, 3, 2, 0, 0, 0, 0], None, _dist(neutral=4 / 7, angry=3 / 7)),
    # 6 of 8 is a majority; 6 already covers 75% of 8
    ([6, 0, 1, 1, 0, 0, 0, 0, 2, 0], _dist(neutral=1.0), _dist(neutral=1.0)),
    # a 5-5 tie has no majority; both tied emotions are taken together
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], None, _dist(neutral=0.5, happy=0.5)),
    # unknown wins: excluded in every mode
    ([2, 0, 0, 0, 0, 0, 0, 0, 7, 1], None, None),
    # unknown ties with the top emotion: it is dropped, and 4 of 10 is not more than half
    ([4, 0, 0, 0, 0, 0, 0, 0, 4, 2], None, None),
    # two ties of two: four emotions exceed the 3-emotion limit
    ([3, 3, 2, 2, 0, 0, 0, 0, 0, 0], None, None),
    # 4 + 3 reach 75% of 9 (the single unknown vote is dropped); surprise is left out
    ([4, 3, 2, 0, 0, 0, 0, 0, 1, 0], None, _dist(neutral=4 / 7, happy=3 / 7)),
    # a contempt majority; 7 of 10 is short of 75%, so disgust joins the distribution
    ([0, 0, 0, 0, 0, 3, 0, 7, 0, 0], _dist(contempt=1.0), _dist(contempt=0.7, disgust=0.3)),
]


@pytest.mark.parametrize("votes,majority,distribution", RULES)
def test_ferplus_label_rules_match_hand_computation(votes, majority, distribution):
    for mode, expected in (("majority", majority), ("crossentropy", distribution), ("probability", distribution)):
        got = vote_target(votes, mode)
        if expected is None:
            assert got is None, (mode, got)
        else:
            np.testing.assert_allclose(got, expected, err_msg=mode)


def _write_ferplus(root, rows_per_split):
    """FER+ in both layouts: FER2013Train|Valid|Test/ with label.csv, and fer2013new.csv beside fer2013.csv."""
    folders = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    kaggle, new = [], [["Usage", "Image name", *VOTE_HEADER]]
    for usage, rows in rows_per_split.items():
        folder = root / folders[usage]
        folder.mkdir(parents=True)
        labels = []
        for votes in rows:
            i = len(kaggle)
            img = _face(i % 7, i)
            kaggle.append((0, usage, img))
            name = f"fer{i:07d}.png"
            cv2.imwrite(str(folder / name), img)
            labels.append([name, "(0, 0, 48, 48)", *votes])
            new.append([usage, name, *votes])
        with open(folder / "label.csv", "w", newline="") as fh:
            csv.writer(fh).writerows(labels)
    write_fer2013_csv(root / "fer2013.csv", kaggle)
    with open(root / "fer2013new.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(new)


def test_ferplus_folders_and_csv_give_the_same_splits_and_labels(tmp_path):
    votes = [r[0] for r in RULES]
    _write_ferplus(tmp_path, {"Training": votes, "PublicTest": votes, "PrivateTest": votes})
    folders = discover(tmp_path, "ferplus", label_mode="crossentropy")
    assert folders.layout == "ferplus-folders" and folders.classes == list(FERPLUS_CLASSES)
    d_folder = load_split(folders, "train", 1, (48, 48))
    (tmp_path / "FER2013Train").rename(tmp_path / "elsewhere")  # no folder layout: fer2013new.csv + fer2013.csv
    from_csv = discover(tmp_path, "ferplus", label_mode="crossentropy")
    assert from_csv.layout == "ferplus-csv"
    for m in (folders, from_csv):
        train_expected = [int(np.argmax(d)) for _, _, d in RULES if d is not None]
        assert [y for _, y in m.splits["train"]] == train_expected
        np.testing.assert_allclose(m.targets["train"], [d for _, _, d in RULES if d is not None], atol=1e-6)
        # val and test are always majority labels
        assert [y for _, y in m.splits["test"]] == [int(np.argmax(x)) for _, x, _ in RULES if x is not None]
        assert "val" not in m.targets and "test" not in m.targets
    d_csv = load_split(from_csv, "train", 1, (48, 48))
    np.testing.assert_array_equal(d_folder.images, d_csv.images)
    np.testing.assert_allclose(d_csv.targets, from_csv.targets["train"])


def test_fer_train_on_ferplus_trains_on_vote_distributions(tmp_path):
    from fer_train.train import main as train_main

    rng = np.random.default_rng(0)
    rows = [list(rng.multinomial(10, [0.4, 0.3, 0.1, 0.1, 0.05, 0.02, 0.02, 0.01, 0, 0])) for _ in range(40)]
    _write_ferplus(tmp_path / "fp", {"Training": rows, "PublicTest": rows[:16], "PrivateTest": rows[16:32]})
    args = ["--data-root", str(tmp_path / "fp"), "--protocol", "ferplus", "--out-dir", str(tmp_path / "runs"), "--arch",
            "vgg", "--arch-arg", "width=0.125", "--epochs", "1", "--batch-size", "8", "--no-progress", "--amp", "off",
            "--threads", "1"]
    for mode in ("crossentropy", "probability", "majority"):
        assert train_main([*args, "--label-mode", mode, "--name", mode]) == 0
        config = json.loads((tmp_path / "runs" / mode / "config.json").read_text())
        assert config["label_mode"] == mode and config["contract"]["classes"] == list(FERPLUS_CLASSES)


def test_soft_target_loss_and_label_targets_match_a_hand_computation():
    import torch

    from fer_train.engine import LabelTargets
    from fer_train.losses import SoftTargetLoss

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    expected = 0.0
    for row, t in zip(logits.tolist(), target.tolist()):
        z = math.log(sum(math.exp(v) for v in row))
        expected += -sum(ti * (v - z) for ti, v in zip(t, row))
    assert SoftTargetLoss("ce")(logits, target).item() == pytest.approx(expected / 2, rel=1e-6)

    labels = torch.tensor([0, 2])
    smoothed = LabelTargets(labels, 3, smoothing=0.3, distributions=target)(torch.tensor([1]))
    torch.testing.assert_close(smoothed, torch.tensor([[0.1, 0.275, 0.625]]))
    sampled = LabelTargets(labels, 3, distributions=target, sample=True, seed=1)
    draws = []
    for epoch in range(40):
        sampled.set_epoch(epoch)
        draws.append(sampled(torch.tensor([0, 1])).argmax(1).tolist())
    assert {a for a, _ in draws} == {0, 1} and {b for _, b in draws} == {1, 2}  # only labels with votes
    sampled.set_epoch(3)
    again = sampled(torch.tensor([0, 1])).argmax(1).tolist()
    assert again == draws[3]  # the same draw for the same epoch: a resumed run trains on the same labels


def test_duplicate_finder_counts_copies_within_train_and_across_splits():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8)
    train = np.concatenate([base, base[:2], base[:1]])  # image 0 three times, image 1 twice
    train_labels = np.asarray([0, 1, 2, 0, 1, 2, 1, 1, 1])  # copies of 0: labels 0, 1, 1 (conflict); of 1: 1, 1
    test = np.concatenate([base[[0, 3]], rng.integers(0, 256, (2, 1, 4, 4), dtype=np.uint8)])
    test_labels = np.asarray([1, 2, 0, 0])

    def split(images, labels):
        return DecodedSplit(images, labels, [str(i) for i in range(len(images))], [])

    dup = duplicate_summary({"train": split(train, train_labels), "test": split(test, test_labels)})
    assert dup["train"] == {"images": 9, "unique": 6, "redundant_copies": 3, "images_in_duplicate_groups": 5,
                            "duplicate_groups": 2, "groups_with_conflicting_labels": 1}
    assert dup["test"] == {"images": 4, "with_copy_in_train": 2, "with_copy_in_train_same_label": 1}
    assert has_copy_in(train, test).tolist() == [True, True, False, False]


def test_training_decoder_and_runtime_preprocessing_give_the_same_tensor(tmp_path):
    import torch

    from fer_train.augment import normalize

    rng = np.random.default_rng(0)
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir(parents=True)
    colour = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "train" / "a" / "x.jpg"), colour)
    cv2.imwrite(str(tmp_path / "train" / "b" / "y.png"), colour[:40, :40, 0])
    for split in ("val",):
        (tmp_path / split).mkdir()
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir()
            cv2.imwrite(str(tmp_path / split / c / "z.png"), colour[:30, :30, 1])
    m = discover(tmp_path)
    for channels in (1, 3):
        contract = ModelContract(classes=("a", "b"), channels=channels, mean=(0.4,) * channels, std=(0.3,) * channels)
        d = load_split(m, "train", channels, contract.input_size)
        trained = normalize(torch.from_numpy(d.images), contract.mean, contract.std).numpy()
        runtime = contract.preprocess([read_image(tmp_path / p) for p in d.paths])
        np.testing.assert_array_equal(trained, runtime)


# --------------------------------------------------------------------------- bad input


def _train_error(tmp_path, capsys, *extra):
    from fer_train.train import main as train_main

    out = tmp_path / "runs"
    code = train_main([*extra, "--out-dir", str(out), "--name", "r", "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("fer-train: error: "), err
    assert not out.exists()
    return err[0]


def test_bad_csv_inputs_name_the_file_and_row(tmp_path, capsys):
    rows = _standard_rows(1)
    path = write_fer2013_csv(tmp_path / "fer2013.csv", rows)
    text = path.read_text().splitlines()
    cases = {
        "missing column": ([text[0].replace("Usage", "Use")] + text[1:], "missing column(s) Usage"),
        "short pixels": (
            text[:3]
            + [text[3].replace(",", ",1 2 3 ", 1).rsplit(",", 1)[0].split(",")[0] + ",1 2 3," + text[3].rsplit(",", 1)[1]]
            + text[4:],
            "row 4: pixels has 3 values",
        ),
        "unknown usage": (text[:5] + [text[5].rsplit(",", 1)[0] + ",Validation"] + text[6:], "row 6: unknown Usage 'Validation'"),
    }
    for name, (lines, message) in cases.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.csv"
        bad.write_text("\n".join(lines) + "\n")
        err = _train_error(tmp_path, capsys, "--data-root", str(bad))
        assert str(bad) in err and message in err, (name, err)


def test_bad_ferplus_inputs_name_the_file_and_row(tmp_path, capsys):
    votes = [r[0] for r in RULES]
    _write_ferplus(tmp_path / "fp", {"Training": votes, "PublicTest": votes, "PrivateTest": votes})
    label = tmp_path / "fp" / "FER2013Valid" / "label.csv"
    lines = label.read_text().splitlines()
    label.write_text("\n".join(lines[:2] + [lines[2].replace("fer", "gone", 1)] + lines[3:]) + "\n")
    err = _train_error(tmp_path, capsys, "--data-root", str(tmp_path / "fp"), "--protocol", "ferplus")
    assert f"{label} row 3: image" in err and "is missing" in err
    label.write_text("\n".join(lines[:3] + [lines[3].rsplit(",", 1)[0] + ",many"] + lines[4:]) + "\n")
    err = _train_error(tmp_path, capsys, "--data-root", str(tmp_path / "fp"), "--protocol", "ferplus")
    assert f"{label} row 4: votes are not numbers" in err


def test_label_mode_needs_the_ferplus_protocol(tree_factory, tmp_path, capsys):
    err = _train_error(tmp_path, capsys, "--data-root", str(tree_factory("fer2013")), "--protocol", "fer2013",
                       "--label-mode", "crossentropy")
    assert "--label-mode crossentropy is for --protocol ferplus" in err
    with pytest.raises(DataError, match="for --protocol ferplus"):
        discover(tree_factory("train-val-test"), label_mode="majority")


def test_an_old_contract_version_is_refused_with_export_again(tmp_path, tree_factory):
    from click.testing import CliRunner

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from benchmarks.bench import main as bench_main
    from fer_runtime.contract import ContractError, read_onnx_contract

    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Slice", ["f", "s", "e"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 48, 48])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor("s", TensorProto.INT64, [1], [0]),
                               helper.make_tensor("e", TensorProto.INT64, [1], [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    old = {"classes": ["angry", "happy", "sad"], "input_size": [48, 48], "channels": 1, "mean": [0.5], "std": [0.5],
           "output": "logits", "crop_margin": 0.1, "version": 2}
    helper.set_model_props(model, {"fer_contract": json.dumps(old)})
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ContractError, match="contract version 2 comes from an older fer-toolchain.*export the model again"):
        read_onnx_contract(path)
    r = CliRunner().invoke(bench_main, ["--model", str(path), "--data-root", str(tree_factory("train-val-test"))])
    assert r.exit_code == 2 and "export the model again with fer-export" in r.output
