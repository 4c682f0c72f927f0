"""Images that belong together (one person, one recorded sequence) kept on one side of every split.

``--group-by REGEX`` names each image's group from its path below the class folder: the first capture group where the
pattern has one, else the whole match (``^(S\\d+)_`` on ``S010_004_00000017.png`` gives ``S010``; ``^([^/]+)/`` gives
the first folder level). Groups are dealt to splits or folds whole, each class kept near its share in every one.

Without a grouping, ``sequence_key`` finds what looks like frames of one recording (names that differ only in a
trailing number), which the data report uses to say that the splits cut through sequences.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fer_runtime.errors import DataError


@dataclass(frozen=True)
class Grouping:
    """How a class-folder root is split by groups: the pattern, and for cross-validation the fold count and which fold
    is held out as the test split."""

    pattern: str
    folds: int = 0  # 0: no cross-validation
    fold: int | None = None  # 1-based, with folds


def compile_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--group-by {pattern!r} is not a regular expression: {exc}") from None


def below_class(source: str, class_name: str) -> str:
    """An item's path below its class folder: ``train/anger/S010_004_1.png`` -> ``S010_004_1.png``."""
    parts = source.split("/")
    return "/".join(parts[parts.index(class_name) + 1:]) if class_name in parts else parts[-1]


def group_key(regex: re.Pattern, source: str, class_name: str) -> str | None:
    """An item's group under a compiled --group-by pattern; None where it does not match."""
    match = regex.search(below_class(source, class_name))
    return None if match is None else (match.group(1) if regex.groups else match.group(0))


def group_keys(items: list[tuple[str, int]], classes: list[str], pattern: str) -> list[str]:
    """Each item's group; ``DataError`` naming how many paths the pattern misses, with an example."""
    regex = compile_pattern(pattern)
    keys, missed = [], []
    for source, label in items:
        key = group_key(regex, source, classes[label])
        if key is None:
            missed.append(below_class(source, classes[label]))
            continue
        keys.append(key)
    if missed:
        raise DataError(f"--group-by {pattern!r} matches no group in {len(missed)} of {len(items)} file paths, e.g. "
                        f"{missed[0]!r} (it is searched in the path below the class folder)")
    return keys


def assign_groups(keys: list[str], labels: list[int], shares: list[float], seed: int) -> list[int]:
    """Each item's bin (a split or a fold), whole groups at a time.

    Groups go largest first (ties in seeded order) to the bin whose per-class counts move least away from its share
    of every class (the smallest rise in squared error; on a tie, the bin furthest below its share of all images):
    group-disjoint, and stratified as far as groups allow. ``DataError`` when a bin is left empty."""
    names = sorted(set(keys))
    num_classes = max(labels) + 1
    per_group = np.zeros((len(names), num_classes))
    index = {k: i for i, k in enumerate(names)}
    for k, y in zip(keys, labels):
        per_group[index[k], y] += 1
    target = np.outer(np.asarray(shares, float), per_group.sum(0))
    counts = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = sorted(rng.permutation(len(names)), key=lambda g: -per_group[g].sum())
    bin_of = np.zeros(len(names), int)
    for g in order:
        rise = (per_group[g] * (2 * (counts - target) + per_group[g])).sum(1)
        filled = counts.sum(1) / np.maximum(target.sum(1), 1e-9)
        b = int(np.lexsort((filled, rise))[0])
        bin_of[g] = b
        counts[b] += per_group[g]
    empty = sorted(set(range(len(shares))) - set(bin_of.tolist()))
    if empty:
        raise DataError(f"{len(names)} groups of --group-by cannot fill {len(shares)} splits or folds by whole groups "
                        "(one is left empty): give fewer folds, or a split fraction nearer 0.5 (a tiny one gets no group, "
                        "a huge one leaves none)")
    return [int(bin_of[index[k]]) for k in keys]


def group_split(items: list[tuple[str, int]], keys: list[str], fraction: float, seed: int) -> tuple[list, list]:
    """``stratified_split`` by groups: (rest, carved), with about ``fraction`` of every class carved, whole groups."""
    if fraction == 0.0:
        return list(items), []
    if not 0.0 < fraction < 1.0:
        raise DataError(f"a split by groups takes a fraction in (0, 1), got {fraction:.3g}: lower --val-split or --folds")
    if len(set(keys)) < 2:
        raise DataError(f"--group-by finds {len(set(keys))} group: a split by groups needs at least two")
    bins = assign_groups(keys, [y for _, y in items], [1.0 - fraction, fraction], seed)
    return [it for it, b in zip(items, bins) if b == 0], [it for it, b in zip(items, bins) if b == 1]


def fold_of(items: list[tuple[str, int]], keys: list[str], folds: int, seed: int) -> list[int]:
    """Each item's fold (0-based) of ``folds`` group-disjoint, class-stratified folds."""
    if len(set(keys)) < folds:
        raise DataError(f"--folds {folds} needs at least {folds} groups; --group-by finds {len(set(keys))}")
    return assign_groups(keys, [y for _, y in items], [1.0 / folds] * folds, seed)


SEQUENCE_NUMBER = re.compile(r"^(.*?)[-_ .]*\d+$")


def sequence_key(source: str) -> str | None:
    """The recording a file looks like a frame of: its path with the trailing frame number of the name removed
    (``anger/S010_004_00000017.png`` -> ``anger/S010_004``); None for a name with no trailing number or nothing
    before it."""
    stem = source.rsplit(".", 1)[0] if "." in source.rsplit("/", 1)[-1] else source
    head, _, name = stem.rpartition("/")
    match = SEQUENCE_NUMBER.match(name)
    if match is None or not match.group(1):
        return None
    return f"{head}/{match.group(1)}" if head else match.group(1)


def crossing(splits: dict[str, list[tuple[str, int]]], key_of: Callable[[str, int], str | None]) -> dict:
    """Groups (``key_of(source, label)``; None for none) and those with images in more than one split: how many, the
    images in them, and examples with their counts per split."""
    where: dict[str, Counter] = {}
    for split, items in splits.items():
        for source, label in items:
            key = key_of(source, label)
            if key is not None:
                where.setdefault(key, Counter())[split] += 1
    crossed = {k: c for k, c in where.items() if len(c) > 1}
    return {"groups": len(where), "images_in_groups": sum(sum(c.values()) for c in where.values()),
            "images_sharing_a_group": sum(sum(c.values()) for c in where.values() if sum(c.values()) > 1),
            "crossing": len(crossed), "images_in_crossing": sum(sum(c.values()) for c in crossed.values()),
            "examples": [{"group": k, "images": dict(c)} for k, c in sorted(crossed.items())[:5]]}
