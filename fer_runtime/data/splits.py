"""Which images make up each split: the layouts and protocols, discovery, and the split manifest a run saves.
Training, evaluation, export and the benchmark all read data through this module.

A data root is one of:
  1. image folders: ROOT/train/<class>/ with ROOT/val/ and/or ROOT/test/ beside it, or ROOT/<class>/
     (stratified, seeded splits carved from it);
  2. the Kaggle image-folder copy of FER2013 (``--protocol fer2013``): ROOT/train + ROOT/test, where
     ``PublicTest_*`` files are validation and ``PrivateTest_*`` the test set;
  3. the Kaggle challenge file ``fer2013.csv`` (or ``icml_face_data.csv``), given as the root itself;
  4. FER+ (``--protocol ferplus``): ROOT/FER2013Train|Valid|Test/ with ``label.csv``, or ``fer2013new.csv``
     beside ``fer2013.csv``.

A manifest item is ``(source, label)``: a path relative to the root, or ``file.csv#ROW`` for data row
ROW of a CSV file. FER+ training in the ``probability`` / ``crossentropy`` label modes also carries each
image's vote distribution (``targets``).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_runtime.data import fer_csv, ferplus
from fer_runtime.data.groups import Grouping, fold_of, group_keys, group_split
from fer_runtime.data.images import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS
from fer_runtime.data.root import resolve_data_root
from fer_runtime.errors import DataError
from fer_runtime.outputs import atomic_write_text

SPLITS = ("train", "val", "test")
PROTOCOLS = ("folders", "fer2013", "ferplus")
CSV_ROW = "#"  # "fer2013.csv#12": data row 12 (0-based) of that file
FERPLUS_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
KAGGLE_CSV_NAMES = ("fer2013.csv", "icml_face_data.csv")
CACHE_FILE = re.compile(r"(train|val|test)-[0-9a-f]{20}\.npz")  # a decoded split in the cache (load_split)


@dataclass
class SplitManifest:
    """Which images make up each split; saved with every run and reused by evaluation, export and the bench."""

    root: str
    classes: list[str]
    layout: str
    splits: dict[str, list[tuple[str, int]]]  # split -> [(source relative to root, label)]
    notes: list[str] = field(default_factory=list)
    protocol: str | None = None
    label_mode: str | None = None  # FER+ only
    targets: dict[str, list[list[float]]] = field(default_factory=dict)  # split -> per-item distributions
    group_by: str | None = None  # the --group-by pattern the splits keep groups whole by

    def to_dict(self) -> dict:
        return {
            "root": self.root, "classes": self.classes, "layout": self.layout, "notes": self.notes,
            "protocol": self.protocol, "label_mode": self.label_mode, "group_by": self.group_by,
            "splits": {k: [[p, int(y)] for p, y in v] for k, v in self.splits.items()},
            "targets": {k: [[round(float(x), 6) for x in t] for t in v] for k, v in self.targets.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> SplitManifest:
        return cls(
            root=data["root"], classes=list(data["classes"]), layout=data["layout"], notes=list(data.get("notes", [])),
            protocol=data.get("protocol"), label_mode=data.get("label_mode"), group_by=data.get("group_by"),
            splits={k: [(str(p), int(y)) for p, y in v] for k, v in data["splits"].items()},
            targets={k: [list(map(float, t)) for t in v] for k, v in data.get("targets", {}).items()},
        )

    def check_classes(self, classes: list[str] | tuple[str, ...]) -> None:
        """A model scored on this data must have its classes, in its order."""
        if self.classes != list(classes):
            raise DataError(f"the model's classes {list(classes)} differ from the data's {self.classes}")

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> SplitManifest:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path} is not a split manifest ({type(exc).__name__}: {exc})") from None

    def counts(self) -> dict[str, list[int]]:
        return {name: np.bincount([y for _, y in items], minlength=len(self.classes)).tolist()
                for name, items in self.splits.items()}


def run_manifest(saved: dict | None, data_root: str | None, rules: dict | None = None) -> SplitManifest:
    """The splits a run was made with, found on this machine.

    The root is ``data_root`` (``--data-root``), then ``FER_DATA_ROOT``, then the saved manifest's own root.
    The saved manifest is used when its files are under that root; otherwise its split ``rules`` (a run's
    protocol, label_mode, val_split, test_split, seed) are applied to the root anew.
    """
    manifest = SplitManifest.from_dict(saved) if saved else None
    root = Path(resolve_data_root(data_root, manifest.root if manifest else None)).expanduser()
    base = root.parent if root.is_file() else root
    if manifest is not None:
        sample = [rel.split(CSV_ROW, 1)[0] for items in manifest.splits.values() for rel, _ in items[:50]]
        if all((base / rel).exists() for rel in sample):
            manifest.root = str(base.resolve())
            return manifest
    rules = rules or {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rules' own warnings were shown when the run was made
        grouping = Grouping(rules["group_by"], rules.get("folds", 0), rules.get("fold")) if rules.get("group_by") else None
        return discover(root, rules.get("protocol"), rules.get("val_split"), rules.get("test_split"),
                        rules.get("seed", 0), rules.get("label_mode"), grouping=grouping)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


SYSTEM_FILES = {"Thumbs.db", "desktop.ini"}  # what file managers leave in folders: never data


def scan_class_folders(folder: Path, root: Path, exclude: dict[Path, str] | None = None) -> dict[str, list[str]]:
    """class name -> sorted image paths relative to root. Errors on no classes or an empty class.

    Folders that are not classes are left out with a warning: ``exclude`` (resolved path -> what it is, e.g. the run's
    --out-dir or the decode cache), fer-train run folders and decode caches. Files in formats not read are counted."""
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    kept = []
    for d in dirs:
        reason = _not_a_class(d, exclude or {})
        if reason:
            warnings.warn(f"{d} left out of the classes: it is {reason}", stacklevel=4)
        else:
            kept.append(d)
    if not kept:
        raise DataError(f"no class folders in {folder}: expected {folder}/<class>/<image files>")
    loose = sorted(p.name for p in folder.iterdir() if _is_image(p))
    if loose:
        warnings.warn(f"{len(loose)} images directly in {folder} (e.g. {loose[0]}) are in no class folder: left out",
                      stacklevel=4)
    found = {}
    for d in kept:
        files, unsupported, other = [], 0, []
        for p in d.rglob("*"):
            if _is_image(p):
                files.append(str(p.relative_to(root)))
            elif p.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS:
                unsupported += 1
            elif p.is_file() and not p.name.startswith(".") and p.name not in SYSTEM_FILES:
                other.append(p.relative_to(d).as_posix())
        files.sort()
        if unsupported:
            warnings.warn(f"class folder {d}: {unsupported} files in a format not read (GIF, HEIC, AVIF) left out; "
                          "convert them to PNG to use them", stacklevel=4)
        if other:
            warnings.warn(f"class folder {d}: {len(other)} files without an image extension left out (e.g. "
                          f"{sorted(other)[0]}; images end in {', '.join(sorted(IMAGE_EXTENSIONS))})", stacklevel=4)
        if not files:
            raise DataError(f"class folder {d} has no images")
        found[d.name] = files
    return found


def _not_a_class(folder: Path, exclude: dict[Path, str]) -> str | None:
    """What a folder under the data root is when it is not a class: a run, a folder of runs, a decode cache."""
    resolved = folder.resolve()
    if resolved in exclude:
        return exclude[resolved]
    if (folder / "split_manifest.json").is_file():
        return "a fer-train run"
    with os.scandir(folder) as entries:  # one pass, no stat per image of a large class
        for entry in entries:
            if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "split_manifest.json")):
                return "a folder of fer-train runs"
            if CACHE_FILE.fullmatch(entry.name):
                return "a decode cache"
    return None


def _check_same_classes(per_split: dict[str, dict[str, list[str]]]) -> list[str]:
    names = {split: sorted(found) for split, found in per_split.items()}
    reference_split, reference = next(iter(names.items()))
    for split, classes in names.items():
        if classes != reference:
            only_a, only_b = sorted(set(reference) - set(classes)), sorted(set(classes) - set(reference))
            raise DataError(f"class folders differ between '{reference_split}' and '{split}': "
                            f"only in {reference_split}: {only_a or '-'}; only in {split}: {only_b or '-'}")
    return reference


def _labelled(found: dict[str, list[str]], classes: list[str]) -> list[tuple[str, int]]:
    return [(p, classes.index(c)) for c in classes for p in found[c]]


def stratified_split(items: list[tuple[str, int]], fraction: float, seed: int) -> tuple[list, list]:
    """Split off ``fraction`` of every class (seeded). Returns (rest, carved)."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"split fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(items), []
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in sorted(items):
        by_class.setdefault(item[1], []).append(item)
    rest, carved = [], []
    for label in sorted(by_class):
        group = by_class[label]
        order = rng.permutation(len(group))
        n_carved = min(max(int(round(fraction * len(group))), 1), len(group) - 1) if len(group) >= 2 else 0
        carved += [group[i] for i in order[:n_carved]]
        rest += [group[i] for i in order[n_carved:]]
    key = lambda it: (it[1], it[0])  # noqa: E731
    return sorted(rest, key=key), sorted(carved, key=key)


def discover(
    root: str | Path,
    protocol: str | None = None,
    val_split: float | None = None,
    test_split: float | None = None,
    seed: int = 0,
    label_mode: str | None = None,
    exclude: dict[Path, str] | None = None,
    grouping: Grouping | None = None,
) -> SplitManifest:
    """Find classes and build train/val/test splits for any supported layout or protocol.

    ``exclude``: folders under the root that are not classes (resolved path -> what they are, for the warning).
    ``grouping``: image folders only; carved splits (and cross-validation folds) keep each group whole."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data root not found: {root}")
    for name, frac in (("--val-split", val_split), ("--test-split", test_split)):
        if frac is not None and not 0.0 <= frac < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {frac}")
    if protocol not in (None, "", *PROTOCOLS):
        raise DataError(f"unknown protocol {protocol!r}: use {', '.join(PROTOCOLS)} or leave it out")
    if root.is_file() and root.suffix.lower() == ".csv":
        protocol = protocol or ("ferplus" if root.name == "fer2013new.csv" else "fer2013")
    elif root.is_file():
        raise DataError(f"data root is a file but not a CSV: {root}")
    if label_mode is not None and protocol != "ferplus":
        raise DataError(f"--label-mode {label_mode} is for --protocol ferplus (FER+ vote labels) only")
    if protocol in ("fer2013", "ferplus") and (val_split or test_split):
        warnings.warn(f"--val-split and --test-split are ignored: --protocol {protocol} has its own validation and test "
                      "splits", stacklevel=2)
    exclude = {Path(p).resolve(): what for p, what in (exclude or {}).items()}
    if grouping is not None and protocol in ("fer2013", "ferplus"):
        raise DataError(f"--group-by is for image folders; --protocol {protocol} has fixed splits")
    try:
        if protocol == "ferplus":
            manifest = _discover_ferplus(root, label_mode or "majority")
        elif protocol == "fer2013":
            manifest = _discover_fer2013(root, exclude)
        else:
            manifest = _discover_folders(root, val_split, test_split, seed, exclude, grouping)
    except (fer_csv.CsvDataError, ValueError) as exc:
        raise DataError(str(exc)) from None
    for name, items in manifest.splits.items():
        if not items:
            raise DataError(f"split '{name}' is empty")
    return manifest


def _kaggle_csv(root: Path) -> Path | None:
    if root.is_file():
        return root
    return next((root / n for n in KAGGLE_CSV_NAMES if (root / n).is_file()), None)


def _discover_fer2013(root: Path, exclude: dict[Path, str]) -> SplitManifest:
    note = "FER2013 protocol: train=Training, val=PublicTest, test=PrivateTest"
    csv_file = _kaggle_csv(root) if root.is_file() or not (root / "train").is_dir() else None
    if csv_file is not None:
        splits: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
        for split, label, row in fer_csv.read_fer2013(csv_file):
            splits[split].append((f"{csv_file.name}{CSV_ROW}{row}", label))
        return SplitManifest(str(csv_file.parent.resolve()), list(fer_csv.CLASSES), "fer2013-csv", splits,
                             [note + f" (from {csv_file.name}; emotion codes mapped to class names)"], "fer2013")
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        raise DataError(f"--protocol fer2013 needs {root}/train and {root}/test (Kaggle image folders) or fer2013.csv")
    found = {s: scan_class_folders(root / s, root, exclude) for s in ("train", "test")}
    classes = _check_same_classes(found)
    test_items = _labelled(found["test"], classes)
    public = [it for it in test_items if Path(it[0]).name.startswith("PublicTest_")]
    private = [it for it in test_items if Path(it[0]).name.startswith("PrivateTest_")]
    if not public or not private:
        raise DataError(f"--protocol fer2013: no PublicTest_*/PrivateTest_* files in {root}/test")
    splits = {"train": _labelled(found["train"], classes), "val": public, "test": private}
    return SplitManifest(str(root.resolve()), classes, "fer2013", splits, [note], "fer2013")


def _discover_ferplus(root: Path, label_mode: str) -> SplitManifest:
    if label_mode not in ferplus.LABEL_MODES:
        raise DataError(f"unknown --label-mode {label_mode!r}: use one of {', '.join(ferplus.LABEL_MODES)}")
    # (split, source, vote cells, where) per face, from whichever FER+ layout is on disk
    rows: list[tuple[str, str, list[str], str]] = []
    base = root if root.is_dir() else root.parent
    if all((base / f).is_dir() for f in FERPLUS_FOLDERS.values()):
        layout = "ferplus-folders"
        for split, folder in FERPLUS_FOLDERS.items():
            label_file = base / folder / "label.csv"
            if not label_file.is_file():
                raise DataError(f"FER+ folder {base / folder} has no label.csv")
            for row_no, row in enumerate(fer_csv.read_rows(label_file), start=1):
                where = f"{label_file} row {row_no}"
                if not row or not row[0].strip():
                    raise DataError(f"{where}: no image name")
                if not (base / folder / row[0].strip()).is_file():
                    raise DataError(f"{where}: image {base / folder / row[0].strip()} is missing")
                rows.append((split, f"{folder}/{row[0].strip()}", row[2:], where))
    else:
        new_csv = base / "fer2013new.csv"
        old_csv = _kaggle_csv(base)
        if not new_csv.is_file() or old_csv is None:
            raise DataError(f"--protocol ferplus needs {base}/FER2013Train|Valid|Test/label.csv, or fer2013new.csv "
                            f"beside fer2013.csv")
        layout = "ferplus-csv"
        faces = fer_csv.read_fer2013(old_csv)
        for i, (split, name, cells) in enumerate(fer_csv.read_ferplus_votes(new_csv, len(faces))):
            if faces[i][0] != split:
                raise DataError(f"{new_csv} row {i + 2}: Usage {split} differs from {old_csv.name}'s {faces[i][0]}")
            if name:  # FER+ judged the face unusable when it gave no image name
                rows.append((split, f"{old_csv.name}{CSV_ROW}{i}", cells, f"{new_csv} row {i + 2}"))
    splits: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    targets: dict[str, list[list[float]]] = {}
    excluded = Counter()
    for split, source, cells, where in rows:
        mode = label_mode if split == "train" else "majority"  # FER+ is always scored on majority labels
        target = ferplus.vote_target(ferplus.parse_votes(cells, where), mode)
        if target is None:
            excluded[split] += 1
            continue
        splits[split].append((source, int(np.argmax(target))))
        if mode != "majority":
            targets.setdefault(split, []).append(target.tolist())
    notes = [f"FER+ protocol: train=FER2013Train ({label_mode} labels), val=FER2013Valid, test=FER2013Test "
             f"(majority labels); excluded by the FER+ label rules: "
             + ", ".join(f"{s} {excluded[s]}" for s in SPLITS)]
    return SplitManifest(str(base.resolve()), list(ferplus.CLASSES), layout, splits, notes, "ferplus", label_mode, targets)


def _discover_folders(root: Path, val_split: float | None, test_split: float | None, seed: int,
                      exclude: dict[Path, str], grouping: Grouping | None) -> SplitManifest:
    has = {s: (root / s).is_dir() for s in SPLITS}
    if has["train"]:
        if grouping is not None and grouping.folds:
            raise DataError("--folds needs one folder of class folders (ROOT/<class>/); this root has its own train/ split")
        return _discover_split_folders(root, has, val_split, test_split, seed, exclude, grouping)
    found = scan_class_folders(root, root, exclude)
    classes = sorted(found)
    test_frac = 0.0 if test_split is None else test_split
    val_frac = 0.1 if val_split is None else val_split
    if test_frac + val_frac >= 1.0:
        raise DataError("--val-split plus --test-split must be below 1")
    items = _labelled(found, classes)
    notes = [f"stratified splits from class folders: val {val_frac}, test {test_frac}, seed {seed}"]
    if grouping is not None and grouping.folds:
        test_frac = 1.0 / grouping.folds
        if test_frac + val_frac >= 1.0:
            raise DataError(f"--val-split {val_frac} and a test fold of 1/{grouping.folds} leave nothing to train on")
        rest, test = _held_out_fold(items, classes, grouping, seed)
        notes = [f"cross-validation: fold {grouping.fold} of {grouping.folds} is the test split; val {val_frac} of the "
                 f"whole carved from the other folds, seed {seed}"]
    else:
        rest, test = _carve(items, classes, test_frac, seed, grouping)
    train, val = _carve(rest, classes, val_frac / (1.0 - test_frac), seed + 1, grouping)  # val: a fraction of the whole
    if not val:
        raise DataError("the validation split is empty: raise --val-split")
    splits = {"train": train, "val": val, **({"test": test} if test else {})}
    if grouping is not None:
        notes.append(f"every group of --group-by {grouping.pattern!r} is whole in one split")
    _warn_thin_splits(splits, classes, val_frac)
    return SplitManifest(str(root.resolve()), classes, "class-folders", splits, notes, "folders",
                         group_by=grouping.pattern if grouping else None)


def _discover_split_folders(root: Path, has: dict[str, bool], val_split: float | None, test_split: float | None,
                            seed: int, exclude: dict[Path, str], grouping: Grouping | None) -> SplitManifest:
    """ROOT/train/<class>/ with val/ and/or test/ beside it (or val carved from train)."""
    notes: list[str] = []
    present = [s for s in SPLITS if has[s]]
    found = {s: scan_class_folders(root / s, root, exclude) for s in present}
    classes = _check_same_classes(found)
    splits = {s: _labelled(found[s], classes) for s in present}
    if has["val"]:
        layout = "train-val-test" if has["test"] else "train-val"
        if val_split:
            notes.append("--val-split ignored: the data root has its own val/ folder")
    elif val_split:
        splits["train"], splits["val"] = _carve(splits["train"], classes, val_split, seed, grouping)
        layout = "train-test" if has["test"] else "train-only"
        notes.append(f"val carved from train: stratified {val_split:.3f}, seed {seed}"
                     + (f", whole groups of --group-by {grouping.pattern!r}" if grouping else ""))
    elif has["test"]:
        splits["val"] = splits["test"]
        layout = "train-test"
        msg = ("no val/ folder and no --val-split: the test set doubles as validation, "
               "so test figures are not independent of model selection")
        warnings.warn(msg, stacklevel=4)
        notes.append(msg)
    else:
        raise DataError(f"{root}/train has no val/ or test/ beside it: pass --val-split F")
    if test_split:
        notes.append("--test-split ignored: the layout has folders per split")
    if grouping is not None:  # the user's own splits: the pattern must still name every file's group (the report
        for items in splits.values():  # then names the groups that cross them)
            group_keys(items, classes, grouping.pattern)
    _warn_thin_splits(splits, classes, val_split)
    return SplitManifest(str(root.resolve()), classes, layout, splits, notes, "folders",
                         group_by=grouping.pattern if grouping else None)


def _carve(items: list[tuple[str, int]], classes: list[str], fraction: float, seed: int,
           grouping: Grouping | None) -> tuple[list, list]:
    """(rest, carved): stratified by class, and by whole groups with a grouping."""
    if grouping is None:
        return stratified_split(items, fraction, seed)
    rest, carved = group_split(items, group_keys(items, classes, grouping.pattern), fraction, seed)
    key = lambda it: (it[1], it[0])  # noqa: E731
    return sorted(rest, key=key), sorted(carved, key=key)


def _held_out_fold(items: list[tuple[str, int]], classes: list[str], grouping: Grouping, seed: int) -> tuple[list, list]:
    """(the other folds, fold ``grouping.fold``) of ``grouping.folds`` group-disjoint folds."""
    if grouping.fold is None or not 1 <= grouping.fold <= grouping.folds:
        raise DataError(f"--fold must be 1 to {grouping.folds}, got {grouping.fold}")
    folds = fold_of(items, group_keys(items, classes, grouping.pattern), grouping.folds, seed)
    return ([it for it, f in zip(items, folds) if f != grouping.fold - 1],
            [it for it, f in zip(items, folds) if f == grouping.fold - 1])


def _warn_thin_splits(splits: dict[str, list[tuple[str, int]]], classes: list[str], val_split: float | None) -> None:
    """Data that trains but cannot be trusted: a class with one training image or none in val, a tiny training split."""
    train = Counter(y for _, y in splits["train"])
    val = Counter(y for _, y in splits.get("val", []))
    for k, name in enumerate(classes):
        if train[k] < 2:
            warnings.warn(f"class '{name}' has {train[k]} training image(s): too few to learn it", stacklevel=4)
        if splits.get("val") and not val[k]:
            warnings.warn(f"class '{name}' has no validation image: validation cannot score it", stacklevel=4)
    if val_split and val_split >= 0.5:
        n = len(splits["train"])
        warnings.warn(f"--val-split {val_split} leaves {n} of {n + len(splits.get('val', []))} images for training",
                      stacklevel=4)
