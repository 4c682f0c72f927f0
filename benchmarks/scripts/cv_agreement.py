"""Where several cross-validations of one data set agree: the images every one of them gets wrong (held out), and the
accuracy of their majority vote. A mistake that no dealing of the folds, seed or recipe fixes is in the starting model's
features or in the label, not in the run's luck.

python -m benchmarks.scripts.cv_agreement CV_RUN CV_RUN [...] [--out FILE.json]   (fer-train --folds runs)
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import click


def held_out(run: Path) -> dict[str, tuple[str, str]]:
    """file -> (label, predicted) from a cross-validation's predictions.csv (a plain run's, with val and test rows
    and no fold, is refused)."""
    with (run / "predictions.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        if "fold" not in (reader.fieldnames or []):
            raise click.UsageError(f"{run} is not a cross-validation (fer-train --folds): its predictions.csv has no fold")
        return {r["file"]: (r["label"], r["predicted"]) for r in reader}


def agreement(runs: list[dict[str, tuple[str, str]]]) -> dict:
    files = sorted(runs[0])
    if any(sorted(r) != files for r in runs[1:]):
        raise ValueError("the cross-validations are not over the same images")
    label = {f: runs[0][f][0] for f in files}
    always = [f for f in files if all(r[f][1] != label[f] for r in runs)]
    vote_right = 0
    for f in files:
        (top, n), *rest = Counter(r[f][1] for r in runs).most_common(2) + [(None, 0)]
        vote_right += top == label[f] and n > rest[0][1]  # a tie is not a right vote
    return {
        "runs": len(runs), "images": len(files),
        "accuracy": [sum(r[f][1] == label[f] for f in files) / len(files) for r in runs],
        "majority_vote_accuracy": vote_right / len(files),
        "wrong_in_every_run": always,
        "their_sequences": sorted({f.split("/")[-1].rsplit("_", 1)[0] for f in always}),  # CK+'s S010_004_0017
    }


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="also write the result as JSON here")
def main(runs: tuple[Path, ...], out: Path | None) -> None:
    """The images several fer-train --folds runs of one data set all get wrong, and their majority vote."""
    missing = [str(r) for r in runs if not (r / "predictions.csv").is_file()]
    if missing:
        raise click.UsageError(f"no predictions.csv in {', '.join(missing)}")
    result = agreement([held_out(r) for r in runs])
    if out:
        out.write_text(json.dumps({"runs_given": [str(r) for r in runs], **result}, indent=2) + "\n")
    click.echo(f"{result['runs']} cross-validations of {result['images']} images: accuracy "
               f"{', '.join(f'{a:.4f}' for a in result['accuracy'])}; majority vote {result['majority_vote_accuracy']:.4f}; "
               f"{len(result['wrong_in_every_run'])} images ({len(result['their_sequences'])} sequences) wrong in every one")


if __name__ == "__main__":
    main()
