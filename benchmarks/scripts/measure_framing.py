"""How a detector's box relates to the training crops' framing: the crop margin and offset a contract should carry.

Training crops (FER+ or FER2013 training images, never test) are scaled up, set in a larger canvas, and run through
each detector as ``fer-run`` runs it. For every face found, the box gives the margin and the centre offset that would
turn it back into the training crop (``crop_face``: a square of side ``max(w, h) * (1 + 2 * margin)`` centred at the
box centre plus ``offset * max(w, h)``). The medians are the framing to record; the IoU of each image's crop under a
framing with its true crop says how close the two framings are.

    python -m benchmarks.scripts.measure_framing --data-root ../shared/data/ferplus --protocol ferplus \
        --yunet ../shared/models/face_detection_yunet.onnx --out-dir benchmarks/results/framing
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import cv2
import numpy as np

from benchmarks.model_card import framing_table
from fer_runtime.data import discover, load_split
from fer_runtime.detect import Detection, create_detector
from fer_runtime.outputs import atomic_write_text

SCALE = 4  # 48 px crops to 192 px: a face the size fer-run meets at its default detection width
PAD = 0.5  # canvas border, as a fraction of the crop side on each side


def canvas(face: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The crop scaled up and set in a canvas of mid grey: the canvas, the crop's side and its offset in it."""
    side = face.shape[0] * SCALE
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    pad = int(side * PAD)
    return cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=128), side, pad


def framing_of(det: Detection, side: int, pad: int) -> tuple[float, float, float]:
    """(margin, dx, dy) that turn ``det``'s box into the true crop [pad, pad + side]^2."""
    x, y, w, h = det.box
    s = max(w, h)
    return (side / s - 1) / 2, (pad + side / 2 - (x + w / 2)) / s, (pad + side / 2 - (y + h / 2)) / s


def crop_iou(det: Detection, framing: tuple[float, float, float], side: int, pad: int) -> float:
    """IoU of the crop a framing gives from ``det`` with the true crop."""
    margin, dx, dy = framing
    x, y, w, h = det.box
    s = max(w, h)
    c = s * (1 + 2 * margin)
    cx, cy = x + w / 2 + dx * s, y + h / 2 + dy * s
    a = (cx - c / 2, cy - c / 2, cx + c / 2, cy + c / 2)
    b = (pad, pad, pad + side, pad + side)
    iw, ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0])), max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (c * c + side * side - inter)


def measure(images: np.ndarray, detector, current: tuple[float, float, float]) -> dict:
    found = []
    for face in images:
        img, side, pad = canvas(face[0])
        dets = detector(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
        if dets:
            det = max(dets, key=lambda d: d.box[2] * d.box[3])
            found.append((det, side, pad))
    if not found:
        return {"images": int(len(images)), "found": 0}
    framings = np.array([framing_of(d, s, p) for d, s, p in found])
    median = tuple(float(v) for v in np.median(framings, 0))
    ious = {"current": np.array([crop_iou(d, current, s, p) for d, s, p in found]),
            "measured": np.array([crop_iou(d, median, s, p) for d, s, p in found])}
    return {
        "images": int(len(images)), "found": len(found),
        "framing": {"margin": median[0], "dx": median[1], "dy": median[2]},
        "spread_p10_p90": {k: [float(np.percentile(framings[:, i], q)) for q in (10, 90)]
                           for i, k in enumerate(("margin", "dx", "dy"))},
        "iou_with_training_crop": {k: {"framing": list(current if k == "current" else median),
                                       "median": float(np.median(v)), "p10": float(np.percentile(v, 10))}
                                   for k, v in ious.items()},
        "_framings": framings,
    }


@click.command()
@click.option("--data-root", required=True)
@click.option("--protocol", default=None)
@click.option("--images", default=2000, show_default=True, help="training crops sampled (seeded)")
@click.option("--yunet", default=None, help="YuNet .onnx: measured beside the Haar cascade")
@click.option("--out-dir", default="benchmarks/results/framing", show_default=True)
def main(data_root: str, protocol: str | None, images: int, yunet: str | None, out_dir: str) -> None:
    if yunet and not Path(yunet).is_file():
        raise click.UsageError(f"--yunet {yunet}: no such file")
    manifest = discover(data_root, protocol)
    decoded = load_split(manifest, "train", 1, (48, 48))
    pick = np.random.default_rng(0).choice(len(decoded.images), min(images, len(decoded.images)), replace=False)
    sample = decoded.images[np.sort(pick)]
    current = (0.1, 0.0, 0.0)  # the contracts' framing before this measurement
    results = {"data_root": str(Path(data_root).resolve()), "split": "train", "scale": SCALE, "detectors": {}}
    detectors = {"haar": create_detector("haar")}
    if yunet:
        detectors["yunet"] = create_detector("yunet", yunet)
    for name, det in detectors.items():
        results["detectors"][name] = measure(sample, det, current)
        click.echo(f"{name}: {results['detectors'][name].get('found')} of {len(sample)} found; "
                   f"{results['detectors'][name].get('framing')}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot({n: r.pop("_framings") for n, r in results["detectors"].items() if "_framings" in r}, out / "framing.png")
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    atomic_write_text(out / "report.md", report(results))
    click.echo(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'framing.png'}")


def report(r: dict) -> str:
    lines = [f"# Detector boxes against the training framing ({r['data_root']}, {r['split']})", "",
             "Command: `python -m benchmarks.scripts.measure_framing` (module docstring). margin, dx, dy: "
             "`crop_face`'s framing, in units of the box side; IoU of the crop with the training crop, median / p10.",
             "", *framing_table(r)]
    return "\n".join(lines) + "\n"


def _plot(framings: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for name, f in framings.items():
        for ax, i, label in zip(axes, range(3), ("margin", "dx (box sides)", "dy (box sides)")):
            ax.hist(f[:, i], bins=40, alpha=0.6, label=name)
            ax.set_xlabel(label, fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle("framing that maps each detector box back onto its training crop", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
