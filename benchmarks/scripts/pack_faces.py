"""FER+ and FER2013 in one file small enough to carry to a GPU machine (64 MiB), and back into both layouts.

The two data sets hold the same 35,887 faces. ``pack`` stores each face once, JPEG-encoded at ``--quality``
(FER+'s PNGs are the original pixels; FER2013's own files are JPEG quality 95 of them), matching every FER2013
file to its FER+ twin by pixels so both layouts share one copy. ``unpack`` writes ``OUT/ferplus`` and
``OUT/fer2013`` in the layouts fer-train reads. Lossy: teachers trained on an unpacked copy are evaluated and
used on the real data.

    python benchmarks/scripts/pack_faces.py pack ../shared/data faces.pkl
    python benchmarks/scripts/pack_faces.py unpack faces.pkl /tmp/data
"""

from __future__ import annotations

import pickle
from pathlib import Path

import click
import cv2
import numpy as np

# FER2013 file prefix -> FER+ folder: the same faces in the same split
SPLITS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
MAX_MEAN_ABS_DIFF = 3.0  # JPEG-95 against the original pixels differs by about 1 grey level on average


def _gray(paths: list[Path]) -> np.ndarray:
    return np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]).astype(np.int16)


def twins(originals: np.ndarray, others: np.ndarray) -> list[int | None]:
    """For each image of ``others``, the index of the same face in ``originals`` (12x12 thumbnails, then checked
    at full size), or None."""

    def thumbs(images: np.ndarray) -> np.ndarray:
        small = [cv2.resize(im.astype(np.uint8), (12, 12), interpolation=cv2.INTER_AREA) for im in images]
        return np.stack(small).reshape(len(images), -1).astype(np.float32)

    a, b = thumbs(originals), thumbs(others)
    norms = (a**2).sum(1)
    found: list[int | None] = []
    for start in range(0, len(b), 2000):
        nearest = (norms[None, :] - 2 * b[start : start + 2000] @ a.T).argmin(1)
        for k, i in enumerate(nearest):
            close = np.abs(originals[i] - others[start + k]).mean() < MAX_MEAN_ABS_DIFF
            found.append(int(i) if close else None)
    return found


def _encode(image: np.ndarray, quality: int) -> bytes:
    return cv2.imencode(".jpg", image.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


@click.group()
def main() -> None:
    """Pack FER+ and FER2013 into one file, or unpack it."""


@main.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--quality", default=90, show_default=True, help="JPEG quality of the packed faces")
def pack(data: Path, out: Path, quality: int) -> None:
    """DATA holds ferplus/ and fer2013/ (as ../shared/data does)."""
    blobs: list[bytes] = []
    ferplus: list[tuple[str, int]] = []
    fer2013: list[tuple[str, int]] = []
    for usage, folder in SPLITS.items():
        plus_paths = sorted((data / "ferplus" / folder).glob("*.png"))
        plus = _gray(plus_paths)
        first = len(blobs)
        blobs += [_encode(im, quality) for im in plus]
        ferplus += [(f"{folder}/{p.name}", first + i) for i, p in enumerate(plus_paths)]
        kaggle_paths = sorted((data / "fer2013").glob(f"*/*/{usage}_*.jpg"))
        for path, twin in zip(kaggle_paths, twins(plus, _gray(kaggle_paths))):
            if twin is None:  # a face FER+ dropped: its own bytes
                blobs.append(path.read_bytes())
                index = len(blobs) - 1
            else:
                index = first + twin
            fer2013.append((str(path.relative_to(data / "fer2013")), index))
        click.echo(f"{usage}: {len(plus_paths)} FER+ faces, {len(kaggle_paths)} FER2013 files")
    labels = {f"{folder}/label.csv": (data / "ferplus" / folder / "label.csv").read_bytes() for folder in SPLITS.values()}
    pack_ = {"quality": quality, "blobs": blobs, "ferplus": ferplus, "fer2013": fer2013, "files": labels}
    out.write_bytes(pickle.dumps(pack_))
    click.echo(f"{out}: {len(blobs)} faces, {out.stat().st_size / 2**20:.1f} MiB")


@main.command()
@click.argument("packed", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def unpack(packed: Path, out: Path) -> None:
    """Write OUT/ferplus and OUT/fer2013 from a pack (a file this script wrote: pickle, so only your own)."""
    data = pickle.loads(packed.read_bytes())
    for rel, content in data["files"].items():
        (out / "ferplus" / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / "ferplus" / rel).write_bytes(content)
    for rel, i in data["ferplus"]:
        face = cv2.imdecode(np.frombuffer(data["blobs"][i], np.uint8), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(out / "ferplus" / rel), face)
    for rel, i in data["fer2013"]:
        (out / "fer2013" / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / "fer2013" / rel).write_bytes(data["blobs"][i])
    click.echo(f"{out}: {len(data['ferplus'])} FER+ faces, {len(data['fer2013'])} FER2013 files")


if __name__ == "__main__":
    main()
