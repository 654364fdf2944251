"""Deterministic splits and the pixel-hash duplicate / leakage check.

* :func:`stratified_split`: fractions per split, stratified by label (scikit-learn).
* :func:`per_class_split`: fixed counts per class and split (paper 2: 300/100/100).
* :func:`image_strata`: one stratum per detection image (its rarest or majority class),
  so that multi-label detection images can go through :func:`stratified_split`.
* :func:`pixel_hash`, :func:`find_duplicates`, :func:`check_no_leakage`,
  :func:`assert_no_leakage`: identical decoded pixels, whatever the file name or format.
* :func:`save_split` / :func:`load_split`: JSON with the method and seed recorded.

Splits are ``dict[split name, sorted list of indices]`` into the caller's record list.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Hashable, Mapping, Optional, Sequence, Union

import numpy as np
from sklearn.model_selection import train_test_split

from ..errors import AnnotationError, DatasetIntegrityError
from ..io import read_image

PathLike = Union[str, Path]


def stratified_split(labels: Sequence[Hashable], fractions: Mapping[str, float] | None = None,
                     seed: int = 0) -> dict[str, list[int]]:
    """Split indices ``0..len(labels)-1`` into named parts with the given fractions
    (summing to 1), each stratified by label; same seed, same split."""
    fractions = dict(fractions or {"train": 0.8, "test": 0.2})
    if abs(sum(fractions.values()) - 1) > 1e-6 or min(fractions.values()) <= 0:
        raise ValueError(f"fractions must be positive and sum to 1, got {fractions}.")
    labels = np.asarray([str(x) for x in labels])
    counts = Counter(labels.tolist())
    if min(counts.values()) < len(fractions):
        rare = {k: v for k, v in counts.items() if v < len(fractions)}
        raise AnnotationError(f"Classes {rare} have fewer images than splits ({len(fractions)}); "
                              "merge or drop them before a stratified split.")
    rest, left, out = np.arange(len(labels)), 1.0, {}
    names = list(fractions)
    for name in names[:-1]:
        take = fractions[name] / left
        if take >= 1 - 1e-9:
            out[name], rest = rest, rest[:0]
            break
        part, rest = train_test_split(rest, train_size=take, stratify=labels[rest], random_state=seed)
        out[name], left = part, left - fractions[name]
    out[names[-1]] = rest
    return {k: sorted(int(i) for i in v) for k, v in out.items()}


def per_class_split(labels: Sequence[Hashable], counts: Mapping[str, int] | None = None,
                    seed: int = 0, scale_down: bool = False) -> dict[str, list[int]]:
    """Take ``counts[split]`` random images of every class for each split (paper 2:
    300 train / 100 val / 100 test per class); images beyond the total are unused.

    A class with fewer images than ``sum(counts)`` raises AnnotationError, or, with
    ``scale_down``, gets counts scaled in proportion (floor; the last split takes the rest).
    """
    counts = dict(counts or {"train": 300, "val": 100, "test": 100})
    need = sum(counts.values())
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_class[str(lab)].append(i)
    short = {c: len(ix) for c, ix in by_class.items() if len(ix) < need}
    if short and not scale_down:
        raise AnnotationError(f"Classes {short} have fewer than {need} images needed for {counts}; "
                              "lower the counts or pass scale_down=True.")
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {k: [] for k in counts}
    for cls in sorted(by_class):
        idx = rng.permutation(by_class[cls])
        n = min(len(idx), need)
        sizes = [int(counts[k] * n / need) for k in counts]
        sizes[-1] = n - sum(sizes[:-1])
        for name, lo, size in zip(counts, np.cumsum([0] + sizes[:-1]), sizes):
            out[name] += idx[lo:lo + size].tolist()
    return {k: sorted(int(i) for i in v) for k, v in out.items()}


def image_strata(coco: dict, mode: str = "rarest") -> list[str]:
    """One label per COCO image, in ``coco["images"]`` order: the name of its rarest class
    in the whole dataset (``"rarest"``) or its most frequent class in the image
    (``"majority"``); ``"none"`` for images without boxes."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    total = Counter(a["category_id"] for a in coco["annotations"])
    per_image: dict[int, Counter] = defaultdict(Counter)
    for a in coco["annotations"]:
        per_image[a["image_id"]][a["category_id"]] += 1
    out = []
    for im in coco["images"]:
        cnt = per_image.get(im["id"])
        if not cnt:
            out.append("none")
        elif mode == "rarest":
            out.append(names[min(cnt, key=lambda c: (total[c], c))])
        elif mode == "majority":
            out.append(names[max(cnt, key=lambda c: (cnt[c], -c))])
        else:
            raise ValueError("mode must be 'rarest' or 'majority'.")
    return out


# ---------------------------------------------------------------- duplicates
def pixel_hash(path: PathLike) -> str:
    """SHA-1 of the decoded RGB pixels and their shape (format- and metadata-independent)."""
    arr = read_image(path)
    return hashlib.sha1(str(arr.shape).encode() + arr.tobytes()).hexdigest()


def hash_images(paths: Sequence[PathLike]) -> dict[Path, str]:
    """:func:`pixel_hash` of every path (pass it as ``hashes=`` to avoid decoding twice)."""
    return {Path(p): pixel_hash(p) for p in paths}


def find_duplicates(paths: Sequence[PathLike], hashes: Mapping[Path, str] | None = None) -> list[list[Path]]:
    """Groups (of 2 or more) of images with identical pixels, each sorted, sorted by first path."""
    hashes = hashes or {}
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in map(Path, paths):
        groups[hashes.get(p) or pixel_hash(p)].append(p)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: str(g[0]))


def check_no_leakage(split_to_paths: Mapping[str, Sequence[PathLike]],
                     hashes: Mapping[Path, str] | None = None) -> list[dict[str, list[Path]]]:
    """Duplicate groups that span more than one split: ``[{split: [paths]}, ...]``;
    an empty list means no image appears (pixel-identically) in two splits."""
    hashes = hashes or {}
    groups: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for split, paths in split_to_paths.items():
        for p in map(Path, paths):
            groups[hashes.get(p) or pixel_hash(p)][split].append(p)
    return [dict(g) for g in groups.values() if len(g) > 1]


def assert_no_leakage(split_to_paths: Mapping[str, Sequence[PathLike]]) -> None:
    """Raise DatasetIntegrityError if any image appears in two splits."""
    leaks = check_no_leakage(split_to_paths)
    if leaks:
        example = {k: [str(p) for p in v] for k, v in leaks[0].items()}
        raise DatasetIntegrityError(f"{len(leaks)} images appear in more than one split, e.g. "
                                    f"{example}. Move each duplicate group into a single split.")


# ---------------------------------------------------------------- persistence
def save_split(split: Mapping[str, Sequence], path: PathLike, *, method: str, seed: int | None,
               **meta: Any) -> Path:
    """Write a split as JSON with ``method``, ``seed`` and any extra metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"method": method, "seed": seed, **meta,
           "splits": {k: [int(x) if isinstance(x, (int, np.integer)) else str(x) for x in v]
                      for k, v in split.items()}}
    path.write_text(json.dumps(doc, indent=1))
    return path


def load_split(path: PathLike, with_meta: bool = False):
    """Read a split written by :func:`save_split`: the ``{name: items}`` dict, or
    ``(splits, meta)`` with ``with_meta``."""
    doc = json.loads(Path(path).read_text())
    if "splits" not in doc:
        raise AnnotationError(f"{path} is not a split file (no 'splits' key).")
    splits = doc.pop("splits")
    return (splits, doc) if with_meta else splits


def subset_coco(coco: dict, n: Optional[int], seed: int = 0) -> dict:
    """At most ``n`` images of a COCO dict (a seeded random choice, the original order
    kept) with their annotations; ids are unchanged and ``info["subset_of"]`` records the
    original count."""
    if n is None or n >= len(coco["images"]):
        return coco
    rng = np.random.default_rng(seed)
    keep = set(rng.choice(len(coco["images"]), size=int(n), replace=False).tolist())
    images = [im for i, im in enumerate(coco["images"]) if i in keep]
    ids = {im["id"] for im in images}
    out = {**coco, "images": images,
           "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    out["info"] = {**coco.get("info", {}), "subset_of": len(coco["images"])}
    return out
