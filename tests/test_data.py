from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fer_runtime.data import DataError, decode_image, discover, load_split, stratified_split

from .conftest import CLASSES


def test_layout_train_val_test(tree_factory):
    m = discover(tree_factory("train-val-test"))
    assert m.layout == "train-val-test"
    assert m.classes == sorted(CLASSES)
    assert set(m.splits) == {"train", "val", "test"}
    assert all(p.startswith("val/") for p, _ in m.splits["val"])


def test_layout_train_test_carves_val(tree_factory):
    root = tree_factory("train-test")
    m = discover(root, val_split=0.25, seed=3)
    assert m.layout == "train-test"
    assert np.bincount([y for _, y in m.splits["val"]]).tolist() == [3, 3, 3]  # stratified
    assert not {p for p, _ in m.splits["val"]} & {p for p, _ in m.splits["train"]}
    assert all(p.startswith("train/") for p, _ in m.splits["val"])


def test_layout_train_test_without_val_split_warns(tree_factory):
    root = tree_factory("train-test")
    with pytest.warns(UserWarning, match="doubles as validation"):
        m = discover(root)
    assert m.splits["val"] == m.splits["test"]
    assert any("doubles as validation" in n for n in m.notes)


def test_layout_class_folders(tree_factory):
    root = tree_factory("class-folders", per_class=20)
    m = discover(root, val_split=0.1, test_split=0.2, seed=1)
    assert m.layout == "class-folders"
    counts = m.counts()
    assert counts["test"] == [4, 4, 4] and counts["val"] == [2, 2, 2] and counts["train"] == [14, 14, 14]
    all_paths = [p for items in m.splits.values() for p, _ in items]
    assert len(all_paths) == len(set(all_paths)) == 60


def test_fer2013_protocol(tree_factory):
    m = discover(tree_factory("fer2013"), protocol="fer2013")
    assert all("PublicTest_" in p for p, _ in m.splits["val"])
    assert all("PrivateTest_" in p for p, _ in m.splits["test"])
    assert all("Training_" in p for p, _ in m.splits["train"])


def test_split_is_deterministic_and_seeded(tree_factory):
    root = tree_factory("class-folders", per_class=20)
    a = discover(root, val_split=0.2, seed=7)
    b = discover(root, val_split=0.2, seed=7)
    c = discover(root, val_split=0.2, seed=8)
    assert a.splits == b.splits
    assert a.splits["val"] != c.splits["val"]


def test_stratified_split_keeps_every_class():
    items = [(f"a{i}", 0) for i in range(100)] + [(f"b{i}", 1) for i in range(5)]
    rest, carved = stratified_split(items, 0.2, seed=0)
    assert sorted(y for _, y in carved) == [0] * 20 + [1]
    assert len(rest) + len(carved) == len(items)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_split_fraction(tree_factory, fraction):
    with pytest.raises(DataError, match=r"\[0, 1\)"):
        discover(tree_factory("class-folders"), val_split=fraction)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="not found"):
        discover(tmp_path / "nope")


def test_no_class_folders(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="no class folders"):
        discover(tmp_path)


def test_empty_class(tree_factory):
    root = tree_factory("class-folders")
    (root / "zzz_empty").mkdir()
    with pytest.raises(DataError, match="zzz_empty has no images"):
        discover(root)


def test_class_sets_differ_between_splits(tree_factory):
    root = tree_factory("train-val-test")
    for f in (root / "val" / "sad").iterdir():
        f.unlink()
    (root / "val" / "sad").rmdir()
    with pytest.raises(DataError, match="class folders differ"):
        discover(root)


def test_corrupt_images_are_counted_and_skipped_or_fatal(tree_factory, tmp_path):
    root = tree_factory("class-folders")
    (root / "happy" / "broken.jpg").write_bytes(b"not a jpeg at all")
    m = discover(root, val_split=0.1)
    split = next(s for s, items in m.splits.items() if any("broken" in p for p, _ in items))
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        d = load_split(m, split, 1, (48, 48), cache_dir=tmp_path / "c1")
    assert [p for p, _ in d.skipped] == ["happy/broken.jpg"]
    assert len(d.images) == len(m.splits[split]) - 1 == len(d.labels) == len(d.paths)
    with pytest.raises(DataError, match="unreadable image"):
        load_split(m, split, 1, (48, 48), cache_dir=tmp_path / "c2", strict=True)


def test_cache_is_reused_and_matches(tree_factory, tmp_path):
    root = tree_factory("train-val-test")
    m = discover(root)
    a = load_split(m, "train", 1, (48, 48), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("train-*.npz"))) == 1
    b = load_split(m, "train", 1, (48, 48), cache_dir=tmp_path)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.images.dtype == np.uint8 and a.images.shape == (len(m.splits["train"]), 1, 48, 48)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "LA"])
def test_decode_any_mode(tmp_path, mode):
    rgb = np.zeros((60, 40, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    img = Image.fromarray(rgb)
    if mode == "I;16":
        img = Image.fromarray((np.full((60, 40), 40000)).astype(np.uint16))
    elif mode != "RGB":
        img = img.convert(mode)
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    img.save(path)
    gray = decode_image(path, 1, 48, 48).transpose(1, 2, 0)
    colour = decode_image(path, 3, 48, 48).transpose(1, 2, 0)
    assert gray.shape == (48, 48, 1) and gray.dtype == np.uint8
    assert colour.shape == (48, 48, 3)
    if mode == "I;16":
        assert abs(int(gray.mean()) - round(40000 / 257)) <= 1
    elif mode == "RGB":
        assert colour[0, 0].tolist() == [200, 100, 0]  # RGB order kept
        assert abs(int(gray[0, 0, 0]) - round(0.299 * 200 + 0.587 * 100)) <= 1
