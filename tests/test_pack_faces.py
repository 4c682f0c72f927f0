from __future__ import annotations

import cv2
import numpy as np
from click.testing import CliRunner

from benchmarks.scripts.pack_faces import SPLITS, main


def test_pack_shares_one_copy_of_each_face_and_unpacks_both_layouts(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    faces = {}
    for usage, folder in SPLITS.items():
        (data / "ferplus" / folder).mkdir(parents=True)
        (data / "ferplus" / folder / "label.csv").write_text(f"{folder}\n")
        for i in range(3):  # smooth faces, so a JPEG of one is nearer to it than to the others
            face = cv2.GaussianBlur(rng.integers(0, 256, (48, 48), dtype=np.uint8), (0, 0), 3)
            cv2.imwrite(str(data / "ferplus" / folder / f"fer{i}.png"), face)
            faces[(usage, i)] = face
        kaggle = data / "fer2013" / ("train" if usage == "Training" else "test") / "happy"
        kaggle.mkdir(parents=True, exist_ok=True)
        for i in (2, 0):
            cv2.imwrite(str(kaggle / f"{usage}_{10 + i}.jpg"), faces[(usage, i)], [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(kaggle / f"{usage}_99.jpg"), rng.integers(0, 256, (48, 48), dtype=np.uint8))  # no twin
    runner = CliRunner()
    assert runner.invoke(main, ["pack", str(data), str(tmp_path / "p.pkl")]).exit_code == 0
    result = runner.invoke(main, ["unpack", str(tmp_path / "p.pkl"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    for usage, folder in SPLITS.items():
        assert (out / "ferplus" / folder / "label.csv").read_text() == f"{folder}\n"
        kaggle = out / "fer2013" / ("train" if usage == "Training" else "test") / "happy"
        for i in (2, 0):  # each FER2013 file is its FER+ twin's packed copy
            twin = cv2.imread(str(kaggle / f"{usage}_{10 + i}.jpg"), cv2.IMREAD_GRAYSCALE)
            assert np.array_equal(twin, cv2.imread(str(out / "ferplus" / folder / f"fer{i}.png"), cv2.IMREAD_GRAYSCALE))
            assert np.abs(twin.astype(int) - faces[(usage, i)]).mean() < 3
        own = data / "fer2013" / ("train" if usage == "Training" else "test") / "happy" / f"{usage}_99.jpg"
        assert (kaggle / f"{usage}_99.jpg").read_bytes() == own.read_bytes()
