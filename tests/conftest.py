from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
YUNET = SHARED / "models" / "face_detection_yunet.onnx"

CLASSES = ("angry", "happy", "sad")


def make_image(label: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A learnable synthetic 'face': class decides where a bright bar sits."""
    img = rng.normal(90, 20, (size, size)).clip(0, 255)
    band = size // len(CLASSES)
    img[label * band : (label + 1) * band, size // 4 : 3 * size // 4] += 120
    return img.clip(0, 255).astype(np.uint8)


def numbered_video(path, frames: int = 12) -> str:
    """A small MPEG-4 video whose frame i is the flat grey 10 + 20 * i."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (160, 120))
    for i in range(frames):
        writer.write(np.full((120, 160, 3), 10 + 20 * i, np.uint8))
    writer.release()
    return str(path)


def write_class_tree(folder: Path, per_class: int, rng: np.random.Generator, prefix: str = "img", classes=CLASSES) -> None:
    from PIL import Image

    for label, name in enumerate(classes):
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(make_image(label % len(CLASSES), rng)).save(d / f"{prefix}_{i:04d}.png")


@pytest.fixture(scope="session")
def tree_factory(tmp_path_factory):
    """Build small image trees in each supported layout."""

    def build(layout: str, per_class: int = 12, seed: int = 0) -> Path:
        root = tmp_path_factory.mktemp(layout)
        rng = np.random.default_rng(seed)
        if layout == "train-val-test":
            for split in ("train", "val", "test"):
                write_class_tree(root / split, per_class, rng, prefix=split)
        elif layout == "train-test":
            write_class_tree(root / "train", per_class, rng, prefix="train")
            write_class_tree(root / "test", per_class, rng, prefix="test")
        elif layout == "class-folders":
            write_class_tree(root, per_class, rng)
        elif layout == "fer2013":
            write_class_tree(root / "train", per_class, rng, prefix="Training")
            write_class_tree(root / "test", per_class // 2, rng, prefix="PublicTest")
            write_class_tree(root / "test", per_class // 2, rng, prefix="PrivateTest")
        else:
            raise ValueError(layout)
        return root

    return build


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """Tiny ONNX classifiers (tests/onnx_models.py) with the contract's classes and fields: they need onnx, never torch."""

    def build(classes: tuple[str, ...] = CLASSES, seed: int = 0, **contract) -> Path:
        pytest.importorskip("onnx")
        from fer_runtime.contract import ModelContract
        from tests.onnx_models import tiny_classifier

        return tiny_classifier(tmp_path_factory.mktemp("m") / "tiny.onnx", ModelContract(classes=classes, **contract), seed=seed)

    return build


@pytest.fixture(scope="session")
def face_video_factory(tmp_path_factory):
    """Videos of the astronaut's face moving across a 640x480 canvas (benchmarks/scripts/make_video.py; needs skimage)."""

    def build(frames: int, fps: int) -> Path:
        pytest.importorskip("skimage")
        from benchmarks.scripts.make_video import write_moving_face_video

        return write_moving_face_video(tmp_path_factory.mktemp("vid") / "face.mp4", frames=frames, fps=fps)

    return build


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # session scope: module-scoped fixtures that train are set up before any function-scoped one
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield
