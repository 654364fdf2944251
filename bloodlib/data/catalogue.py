"""Dataset catalogue: what each dataset is, where it lives, how to get it, and its manifest.

* :data:`CATALOGUE` maps a dataset name to its :class:`DatasetInfo` (licence, citation,
  sources, expected layout).
* :func:`data_dir` / :func:`dataset_path` find a dataset on disk (``$BLOODLIB_DATA/NAME``)
  and explain what to do when it is not there.
* :func:`build_manifest` / :func:`verify` check files against the shipped SHA-256
  manifests (``bloodlib/data/manifests/NAME.json.gz``).
* :func:`fetch` downloads and unpacks a dataset; it is the only function that uses the
  network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union
from urllib.parse import urlparse

from ..io import sha256_file
from ..errors import (BloodlibError, DatasetIntegrityError, DatasetNotFoundError,
                      UnknownDatasetError)
import pandas as pd
from tqdm.auto import tqdm

PathLike = Union[str, Path]

__all__ = [
    "TASKS", "Source", "DatasetInfo", "CATALOGUE", "UnknownDatasetError", "VerifyReport",
    "get_info", "data_dir", "dataset_path", "is_available", "build_manifest",
    "write_manifest", "load_manifest", "verify", "fetch", "describe", "MANIFEST_DIR",
]

TASKS = ("detection", "instance_segmentation", "semantic_segmentation", "classification")
MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"
STAMP_NAME = ".bloodlib_verified.json"
_DOC_PREFIXES = ("readme", "license", "licence", "copying")  # not data: never in manifests
_CHUNK = 1 << 20
MAX_RATIO = 200  # uncompressed / compressed size of one archive member; more is a zip bomb


@dataclass(frozen=True)
class Source:
    """One downloadable archive (zip or tar).

    ``members`` maps archive paths (after the archive's single top folder, e.g.
    GitHub's ``<repo>-<branch>/``, is stripped) to paths in the dataset folder:
    ``("src/dir/", "dest/dir/")`` moves a folder, ``("FILE", "NEW")`` one file.
    Empty ``members`` extracts everything as is. Extraction stops with
    :class:`DatasetIntegrityError` past ``max_bytes`` written or a member compressed more
    than ``MAX_RATIO`` times (a zip bomb).
    """

    url: str
    sha256: Optional[str] = None
    members: tuple[tuple[str, str], ...] = ()
    max_bytes: int = 8 << 30
    commit: Optional[str] = None


@dataclass(frozen=True)
class DatasetInfo:
    """Everything the course knows about one dataset."""

    name: str
    title: str
    description: str
    tasks: tuple[str, ...]
    classes: tuple[str, ...]
    licence: str
    citation: str
    homepage: str
    sources: tuple[Source, ...] = ()
    manual_download: str = ""
    expected_layout: tuple[str, ...] = ()
    subset_ok: bool = False
    manifest: Optional[str] = None
    extra_ok: tuple[str, ...] = ()

    @property
    def urls(self) -> list[str]:
        """Download URLs, in order."""
        return [s.url for s in self.sources]

    @property
    def downloadable(self) -> bool:
        """True when :func:`fetch` can download it (False: manual download only)."""
        return bool(self.sources)


def _gh(repo: str, commit: str, *members: tuple[str, str]) -> Source:
    """A GitHub repository's archive at one commit. The commit id is a hash of every file
    in it, so the download cannot change upstream; GitHub generates its zips on request
    and their bytes (compression) have changed over the years, so the per-file SHA-256
    manifest, checked after extraction, is the content check rather than an archive hash.
    Each pinned commit was checked against the manifest file by file (git blob ids)."""
    return Source(f"https://github.com/{repo}/archive/{commit}.zip", members=tuple(members),
                  commit=commit)


_TCIA_NOTE = ("Download it from The Cancer Imaging Archive ({url}; free, accept the TCIA data "
              "usage policy; large collections need the IBM Aspera or NBIA data retriever). ")

CATALOGUE: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo(
        name="bccd",
        title="BCCD (Blood Cell Count and Detection)",
        description="364 peripheral blood smear images (640x480 JPEG) with Pascal VOC boxes "
                    "for WBC, RBC and platelets; official train/val/test split (205/87/72) in "
                    "BCCD/ImageSets/Main.",
        tasks=("detection",),
        classes=("wbc", "rbc", "platelets"),
        licence="MIT",
        citation="Shenggan, BCCD Dataset, https://github.com/Shenggan/BCCD_Dataset (2017); "
                 "data from cosmicad/dataset and akshaylamba/all_CELL_data.",
        homepage="https://github.com/Shenggan/BCCD_Dataset",
        sources=(_gh("Shenggan/BCCD_Dataset", "d272fb14cdff6e473fafeeeba32aba5f560e9e43", ("BCCD/", "BCCD/"), ("LICENSE", "LICENSE"),
                     ("README.md", "README.md")),),
        expected_layout=("BCCD/JPEGImages", "BCCD/Annotations", "BCCD/ImageSets/Main"),
        manifest="bccd",
    ),
    DatasetInfo(
        name="bccd_wbc_masks",
        title="WBC masks for BCCD (Banik et al. 2020)",
        description="367 RGB PNG masks (640x480) masks/BloodImage_Mask_NNNNN.png, pixel-aligned "
                    "with bccd/BCCD/JPEGImages/BloodImage_NNNNN.jpg, one WBC per image. Values: "
                    "~0 background, ~155-162 cytoplasm, 255 nucleus (anti-aliased edges; "
                    "threshold them). Needs the `bccd` dataset for the images.",
        tasks=("semantic_segmentation",),
        classes=("background", "cytoplasm", "nucleus"),
        licence="MIT",
        citation="P. P. Banik, R. Saha, K.-D. Kim, An automatic nucleus segmentation and CNN "
                 "model based classification method of white blood cell, Expert Systems with "
                 "Applications 149 (2020) 113211.",
        homepage="https://github.com/ParthaPratimBanik/An-Automatic-Nucleus-Segmentation-and-"
                 "CNN-Model-based-Classification-Method-of-White-Blood-Cell",
        sources=(_gh("ParthaPratimBanik/An-Automatic-Nucleus-Segmentation-and-CNN-Model-based-"
                     "Classification-Method-of-White-Blood-Cell", "d8ee339ad22dc30d3acdc2d653ab5768eae10ab3",
                     ("wbc_nucleus_seg_localz/Datasets/Ground Truth/BCCD/", "masks/"),
                     ("LICENSE", "LICENSE"), ("README.md", "README.md")),),
        expected_layout=("masks",),
        manifest="bccd_wbc_masks",
    ),
    DatasetInfo(
        name="txl_pbc",
        title="TXL-PBC (re-annotated BCCD, BCD, PBC and Raabin-WBC images)",
        description="1,440 smear images with YOLO boxes (WBC, RBC, Platelets; class order in "
                    "TXL_PBC/data.yaml): train 1008, val 288, test 144. The manifest covers "
                    "train and val; test files, when present, are accepted unhashed.",
        tasks=("detection",),
        classes=("wbc", "rbc", "platelets"),
        licence="MIT",
        citation="L. Gan, X. Li, TXL-PBC: a freely accessible labeled peripheral blood cell "
                 "dataset, arXiv:2407.13214 (2024).",
        homepage="https://github.com/lugan113/TXL-PBC_Dataset",
        sources=(_gh("lugan113/TXL-PBC_Dataset", "056d09e45403f4d1321b99cdb2cfcc3eb605edcf", ("TXL_PBC/", "TXL_PBC/"),
                     ("LICENSE", "LICENSE.txt"), ("LICENSE.txt", "LICENSE.txt"),
                     ("README.md", "README.md")),),
        expected_layout=("TXL_PBC/images/train", "TXL_PBC/labels/train", "TXL_PBC/images/val",
                         "TXL_PBC/labels/val", "TXL_PBC/data.yaml"),
        manifest="txl_pbc",
        extra_ok=("TXL_PBC/images/test/", "TXL_PBC/labels/test/", "TXL_PBC/labels/classes.txt"),
    ),
    DatasetInfo(
        name="wbc_seg_zheng",
        title="WBC Image Dataset (Zheng et al. 2018): Jiangxi and CellaVision",
        description="Dataset 1 (Jiangxi Tecom, 300 images 120x120) and Dataset 2 (CellaVision "
                    "blog, 100 images 300x300): NNN.bmp image + NNN.png mask (0 background incl. "
                    "RBCs, 128 cytoplasm, 255 nucleus); per-image WBC class in the two CSV files "
                    "(1 neutrophil, 2 lymphocyte, 3 monocyte, 4 eosinophil, 5 basophil).",
        tasks=("semantic_segmentation", "classification"),
        classes=("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"),
        licence="GPL-3.0",
        citation="X. Zheng, Y. Wang, G. Wang, J. Liu, Fast and robust segmentation of white "
                 "blood cell images by self-supervised learning, Micron 107 (2018) 55-71, "
                 "doi:10.1016/j.micron.2018.01.010. Acknowledge Jiangxi Tecom Science "
                 "Corporation (Dataset 1) and the CellaVision blog (Dataset 2).",
        homepage="https://github.com/zxaoyou/segmentation_WBC",
        sources=(_gh("zxaoyou/segmentation_WBC", "fa9c01622f52bccb9aeb8a6f2628f564e377767d", ("Dataset 1/", "Dataset 1/"),
                     ("Dataset 2/", "Dataset 2/"),
                     ("Class Labels of Dataset 1.csv", "Class Labels of Dataset 1.csv"),
                     ("Class Labels of Dataset 2.csv", "Class Labels of Dataset 2.csv"),
                     ("Dataset 1.png", "Dataset 1.png"), ("Dataset 2.png", "Dataset 2.png"),
                     ("LICENSE", "LICENSE"), ("README.rst", "README.rst")),),
        expected_layout=("Dataset 1", "Dataset 2", "Class Labels of Dataset 1.csv",
                         "Class Labels of Dataset 2.csv"),
        manifest="wbc_seg_zheng",
    ),
    DatasetInfo(
        name="pbc",
        title="PBC: Peripheral Blood Cells (Acevedo et al. 2020)",
        description="17,092 JPEG images (360x363) of single normal peripheral blood cells "
                    "(CellaVision DM96, Hospital Clinic Barcelona) in 8 class folders under "
                    "PBC_dataset_normal_DIB/. The course's reference copy is a deterministic "
                    "4,800-image subset (600 per class); any subset laid out the same way works.",
        tasks=("classification",),
        classes=("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                 "neutrophil", "platelet"),
        licence="CC BY 4.0",
        citation="A. Acevedo, A. Merino, S. Alférez, Á. Molina, L. Boldú, J. Rodellar, A dataset "
                 "of microscopic peripheral blood cell images for development of automatic "
                 "recognition systems, Data in Brief 30 (2020) 105474; data: Mendeley Data, "
                 "doi:10.17632/snkd93bnjr.1.",
        homepage="https://data.mendeley.com/datasets/snkd93bnjr/1",
        manual_download="Download PBC_dataset_normal_DIB.zip from Mendeley Data "
                        "(https://data.mendeley.com/datasets/snkd93bnjr/1, "
                        "doi:10.17632/snkd93bnjr.1) and unzip it so that the class folders "
                        "(basophil, eosinophil, ...) are in {folder}/PBC_dataset_normal_DIB/.",
        expected_layout=("PBC_dataset_normal_DIB",),
        subset_ok=True,
        manifest="pbc",
    ),
    DatasetInfo(
        name="segpc2021",
        title="SegPC-2021: multiple-myeloma plasma cells (SBILab)",
        description="Bone-marrow aspirate images of multiple-myeloma plasma cells: 298 train and "
                    "199 valid images letterboxed to 512x512 with merged binary masks "
                    "(MultipleMyeloma-ImageMask-Dataset_V2/{train,valid}/{images,masks}), plus "
                    "per-instance COCO polygons for cells and nuclei at the original resolution "
                    "(annotations/*.json; letterbox transform applied by the parser; ids match by stem).",
        tasks=("instance_segmentation", "semantic_segmentation"),
        classes=("cell", "nucleus"),
        licence="CC BY-NC-SA 4.0 (non-commercial)",
        citation="A. Gupta, R. Gupta, S. Gehlot, S. Goswami, SegPC-2021: Segmentation of "
                 "Multiple Myeloma Plasma Cells in Microscopic Images, IEEE Dataport (2021), "
                 "doi:10.21227/7np1-2q42; also cite GCTI-SN (Medical Image Analysis 65, 2020), "
                 "EDNFC-Net (ICASSP 2020) and PCSeg (PLoS ONE 13(12) e0207908, 2018).",
        homepage="https://doi.org/10.21227/7np1-2q42",
        sources=(
            _gh("sarah-antillia/MultipleMyeloma-ImageMask-Dataset", "1bcfbdfca0c411698a8efa93724717adda663b51",
                ("MultipleMyeloma-ImageMask-Dataset_V2/train/",
                 "MultipleMyeloma-ImageMask-Dataset_V2/train/"),
                ("MultipleMyeloma-ImageMask-Dataset_V2/valid/",
                 "MultipleMyeloma-ImageMask-Dataset_V2/valid/"),
                ("README.md", "README_images.md")),
            _gh("qiuminlu2010/segpc", "ff2ad285ee401c2bd768ad664a2e42616076fc6f", ("datasets/trainval/", "annotations/")),
        ),
        manual_download="The original full-resolution BMP images are on IEEE Dataport "
                        "(doi:10.21227/7np1-2q42) and Kaggle (sbilab/segpc2021dataset); they "
                        "are not needed by the course.",
        expected_layout=("MultipleMyeloma-ImageMask-Dataset_V2/train/images",
                         "MultipleMyeloma-ImageMask-Dataset_V2/train/masks",
                         "MultipleMyeloma-ImageMask-Dataset_V2/valid/images",
                         "MultipleMyeloma-ImageMask-Dataset_V2/valid/masks", "annotations"),
        manifest="segpc2021",
    ),
    DatasetInfo(
        name="sn_am",
        title="SN-AM: B-ALL and multiple-myeloma bone-marrow images (SBILab, TCIA)",
        description="Microscopic images of bone-marrow aspirate smears from B-ALL and MM "
                    "patients, published for stain-normalisation research (paper 3). Not "
                    "redistributable here: manual download only.",
        tasks=("classification",),
        classes=("all", "mm"),
        licence="TCIA Data Usage Policy (see the collection page)",
        citation="A. Gupta et al., GCTI-SN: Geometry-inspired chemical and tissue invariant "
                 "stain normalization of microscopic medical images, Medical Image Analysis 65 "
                 "(2020) 101788; data: The Cancer Imaging Archive, SN-AM collection.",
        homepage="https://www.cancerimagingarchive.net/collection/sn-am/",
        manual_download=_TCIA_NOTE.format(url="https://www.cancerimagingarchive.net/collection/"
                                              "sn-am/")
        + "Unpack it unchanged into {folder}/.",
    ),
    DatasetInfo(
        name="mimm_sbilab",
        title="MiMM_SBILab: multiple-myeloma bone-marrow images (SBILab, TCIA)",
        description="Bone-marrow aspirate images of multiple myeloma with plasma-cell "
                    "annotations (paper 3). Manual download only.",
        tasks=("instance_segmentation",),
        classes=("cell", "nucleus"),
        licence="TCIA Data Usage Policy (see the collection page)",
        citation="A. Gupta, P. Mallick, O. Sharma, R. Gupta, R. Duggal, PCSeg: Color model "
                 "driven probabilistic multiphase level set based tool for plasma cell "
                 "segmentation in multiple myeloma, PLoS ONE 13(12) (2018) e0207908; data: The "
                 "Cancer Imaging Archive, MiMM_SBILab collection.",
        homepage="https://www.cancerimagingarchive.net/collection/mimm_sbilab/",
        manual_download=_TCIA_NOTE.format(url="https://www.cancerimagingarchive.net/collection/"
                                              "mimm_sbilab/")
        + "Unpack it unchanged into {folder}/.",
    ),
    DatasetInfo(
        name="c_nmc_2019",
        title="C-NMC 2019: normal vs malignant B-lymphoblast cells (ISBI 2019 challenge)",
        description="About 15,000 segmented single-cell images (ALL blasts vs normal 'hem' "
                    "cells) from 118 subjects, in training folds plus preliminary and final "
                    "test sets (paper 3). Manual download only.",
        tasks=("classification",),
        classes=("all", "hem"),
        licence="TCIA Data Usage Policy (see the collection page)",
        citation="A. Gupta, R. Gupta (eds.), ISBI 2019 C-NMC Challenge: Classification in Cancer "
                 "Cell Imaging, Lecture Notes in Bioengineering, Springer (2019); data: The "
                 "Cancer Imaging Archive, C-NMC 2019 collection.",
        homepage="https://www.cancerimagingarchive.net/collection/c_nmc_2019/",
        manual_download=_TCIA_NOTE.format(url="https://www.cancerimagingarchive.net/collection/"
                                              "c_nmc_2019/")
        + "A copy is also on Kaggle (search 'C-NMC leukemia'; needs a Kaggle account). "
          "Unpack it unchanged into {folder}/.",
    ),
]}


def get_info(name: str) -> DatasetInfo:
    """The catalogue entry for ``name``; :class:`UnknownDatasetError` lists valid names."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise UnknownDatasetError(f"Unknown dataset {name!r}. Known datasets: "
                                  f"{', '.join(sorted(CATALOGUE))}.") from None


# ----------------------------------------------------------------------------- locations

def data_dir() -> Path:
    """The folder holding all datasets: ``$BLOODLIB_DATA``, else the source checkout's
    ``data/`` (when bloodlib is imported from one), else ``./data``."""
    env = os.environ.get("BLOODLIB_DATA")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "bloodlib").is_dir():
        return checkout / "data"
    return Path.cwd() / "data"


def _folder(name: str, root: Optional[PathLike]) -> Path:
    return (Path(root).expanduser() if root is not None else data_dir()) / name


def _missing_layout(info: DatasetInfo, folder: Path) -> list[str]:
    if not folder.is_dir():
        return [f"{folder.name}/ (the dataset folder itself)"]
    if not info.expected_layout:
        return [] if any(folder.iterdir()) else [f"{folder.name}/ is empty"]
    return [p for p in info.expected_layout if not (folder / p).exists()]


def _how_to_get(info: DatasetInfo, folder: Path) -> str:
    lines = []
    if info.manual_download:
        lines.append("How to get it: " + info.manual_download.format(folder=folder))
    if info.sources:
        lines.append(f"Run `python -m bloodlib fetch {info.name}` (or "
                     f"`bloodlib.data.catalogue.fetch({info.name!r})`) to download it from "
                     + ", ".join(info.urls) + f" into {folder}.")
    layout = ", ".join(info.expected_layout) or "the files as distributed"
    lines.append(f"Put it in {folder} so that it contains: {layout}. If your datasets live "
                 f"elsewhere, set BLOODLIB_DATA to the folder that holds `{info.name}/` "
                 f"(now: {folder.parent}). Licence: {info.licence}; homepage: {info.homepage}.")
    return "\n".join(lines)


def dataset_path(name: str, root: Optional[PathLike] = None) -> Path:
    """``<root or data_dir()>/<name>``, after checking its expected layout.

    Raises :class:`DatasetNotFoundError` saying what is missing, where to get the data and
    exactly which folder to put it in.
    """
    info = get_info(name)
    folder = _folder(name, root)
    missing = _missing_layout(info, folder)
    if missing:
        raise DatasetNotFoundError(
            f"Dataset {name!r} ({info.title}) is not available at {folder}: missing "
            f"{', '.join(missing)}.\n" + _how_to_get(info, folder))
    return folder


def is_available(name: str, root: Optional[PathLike] = None) -> bool:
    """True when ``name``'s expected layout exists (files are not hashed)."""
    return not _missing_layout(get_info(name), _folder(name, root))


# ----------------------------------------------------------------------------- manifests

def _is_data_file(rel: str) -> bool:
    parts = rel.split("/")
    return (not any(p.startswith(".") for p in parts)
            and not parts[-1].lower().startswith(_DOC_PREFIXES))


def _data_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> path of every data file (no hidden files, READMEs, licences)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            path = Path(dirpath) / fn
            rel = path.relative_to(root).as_posix()
            if _is_data_file(rel) and path.is_file():
                out[rel] = path
    return out



def build_manifest(root: PathLike) -> dict[str, str]:
    """SHA-256 hex digest of every data file under ``root``, keyed by relative POSIX path."""
    return {rel: sha256_file(p) for rel, p in _data_files(Path(root)).items()}


def write_manifest(name: str, root: PathLike, out_dir: PathLike = MANIFEST_DIR) -> Path:
    """Hash ``root`` and store ``{"files": {rel: sha256}, "sizes": {rel: bytes}}`` as
    ``<out_dir>/<name>.json.gz`` (deterministic bytes)."""
    root = Path(root)
    files = build_manifest(root)
    sizes = {rel: (root / rel).stat().st_size for rel in files}
    payload = json.dumps({"dataset": name, "files": files, "sizes": sizes},
                         sort_keys=True, separators=(",", ":")).encode()
    out = Path(out_dir) / f"{name}.json.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(payload, mtime=0))
    return out


def load_manifest(manifest: str) -> Optional[dict]:
    """The stored manifest ``{"files": ..., "sizes": ...}``, or None when none is shipped."""
    path = MANIFEST_DIR / f"{manifest}.json.gz"
    if not path.is_file():
        return None
    return json.loads(gzip.decompress(path.read_bytes()))


@dataclass
class VerifyReport:
    """Result of :func:`verify`. ``ok`` needs every manifest file present and unaltered
    and no data file outside the manifest (an injected image would be loaded), except for
    a dataset that may be a subset or superset of its manifest (``subset_ok``: PBC's full
    17,092 images beside the 4,800-image reference manifest) and the paths the catalogue
    names in ``extra_ok``."""

    name: str
    folder: Path
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    subset_ok: bool = False
    has_manifest: bool = True
    quick: bool = False
    cached: bool = False

    @property
    def ok(self) -> bool:
        return not self.mismatched and (self.subset_ok or not (self.missing or self.unexpected))

    def summary(self) -> str:
        if not self.has_manifest:
            return f"{self.name}: no manifest shipped; only the folder layout was checked."
        how = "cached" if self.cached else ("sizes" if self.quick else "sha256, full")
        text = (f"{self.name}: {'OK' if self.ok else 'FAILED'} ({how}); {self.checked} files "
                f"checked, {len(self.missing)} missing, {len(self.mismatched)} altered, "
                f"{len(self.unexpected)} not in the manifest")
        for label, items in (("altered", self.mismatched), ("missing", self.missing),
                             ("not in manifest", self.unexpected)):
            if items:
                text += f"\n  {label}: {', '.join(items[:5])}" + (" ..." if len(items) > 5 else "")
        return text

    def raise_for_errors(self) -> None:
        """Raise :class:`DatasetIntegrityError` unless :attr:`ok`."""
        if not self.ok:
            raise DatasetIntegrityError(
                self.summary() + f"\nFiles in {self.folder} do not match the manifest. Remove "
                "the files not in the manifest, or re-download them (`python -m bloodlib fetch {self.name} --force`, or "
                "fetch(name, force=True)) or restore the original files.")


def _manifest_key(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest["files"], sort_keys=True).encode()).hexdigest()


def _fingerprint(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for rel, p in sorted(files.items()):
        st = p.stat()
        # ctime too: restoring a file's mtime after editing it (os.utime) changes its ctime
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
    return h.hexdigest()


def _read_stamp(folder: Path) -> dict:
    try:
        return json.loads((folder / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _write_stamp(folder: Path, stamp: dict) -> None:
    """Remember a verification, unless the folder is read-only (also for root: a shared
    copy marked read-only is left untouched and simply re-hashed next time)."""
    try:
        if folder.stat().st_mode & stat.S_IWUSR:
            (folder / STAMP_NAME).write_text(json.dumps(stamp))
    except OSError:
        pass


def verify(name: str, root: Optional[PathLike] = None, quick: bool = False,
           use_cache: bool = True) -> VerifyReport:
    """Check ``name``'s files against its manifest (SHA-256; sizes only when ``quick``).

    A successful full check is remembered in ``<folder>/.bloodlib_verified.json``, keyed on
    the manifest and on the files' sizes, mtimes and ctimes, so an unchanged folder is not
    re-hashed; ``use_cache=False`` (``bloodlib verify --full``) hashes every file anyway. Raises :class:`DatasetNotFoundError` when the layout is missing; call
    :meth:`VerifyReport.raise_for_errors` to turn a failed check into an exception.
    """
    info = get_info(name)
    folder = dataset_path(name, root)
    manifest = load_manifest(info.manifest) if info.manifest else None
    if manifest is None:
        return VerifyReport(name, folder, subset_ok=info.subset_ok, has_manifest=False)
    expected: dict[str, str] = manifest["files"]
    sizes: dict[str, int] = manifest.get("sizes", {})
    present = _data_files(folder)
    unexpected = [rel for rel in set(present) - set(expected) if not rel.startswith(info.extra_ok)]
    report = VerifyReport(name, folder, subset_ok=info.subset_ok, quick=quick,
                          missing=sorted(set(expected) - set(present)),
                          unexpected=sorted(unexpected))
    to_check = sorted(set(expected) & set(present))
    report.checked = len(to_check)
    stamp = {"manifest": _manifest_key(manifest), "fingerprint": _fingerprint(present)}
    if use_cache and _read_stamp(folder) == stamp:
        report.cached = True
        return report
    for rel in to_check:
        if rel in sizes and present[rel].stat().st_size != sizes[rel]:
            report.mismatched.append(rel)
        elif not quick and sha256_file(present[rel]) != expected[rel]:
            report.mismatched.append(rel)
    if report.ok and not quick:
        _write_stamp(folder, stamp)
    return report


# ----------------------------------------------------------------------------- download

def _stream(url: str) -> tuple[Iterator[bytes], Optional[int]]:
    """Chunks of ``url`` (http(s) via requests, or file://) and the size if known."""
    if urlparse(url).scheme == "file":
        path = Path(urllib.request.url2pathname(urlparse(url).path))
        fh = open(path, "rb")

        def chunks() -> Iterator[bytes]:
            with fh:
                yield from iter(lambda: fh.read(_CHUNK), b"")
        return chunks(), path.stat().st_size
    import requests  # only imported when something is really downloaded

    resp = requests.get(url, stream=True, timeout=(10, 60))
    resp.raise_for_status()
    total = int(resp.headers.get("content-length") or 0) or None
    return resp.iter_content(_CHUNK), total


def _download(url: str, target: Path, progress: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    chunks, total = _stream(url)
    try:
        with open(part, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                           desc=target.name, disable=not progress) as bar:
            for chunk in chunks:
                out.write(chunk)
                bar.update(len(chunk))
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)
    return target


def _map_member(rel: str, members: tuple[tuple[str, str], ...]) -> Optional[str]:
    if not members:
        return rel
    for src, dst in members:
        if rel == src or (src.endswith("/") and rel.startswith(src)):
            return dst + rel[len(src):]
    return None


def _open_archive(archive: Path) -> tuple[Any, dict[str, Any], Callable[[Any], Any]]:
    """(archive object, {name: entry} of its files, opener) for a zip or tar."""
    if zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        return zf, {i.filename: i for i in zf.infolist() if not i.is_dir()}, zf.open
    if tarfile.is_tarfile(archive):
        tf = tarfile.open(archive)
        return tf, {m.name: m for m in tf.getmembers() if m.isfile()}, tf.extractfile
    raise DatasetIntegrityError(f"{archive} is neither a zip nor a tar archive.")


def _check_ratio(archive: Path, arcname: str, entry: Any) -> None:
    """A zip member compressed more than MAX_RATIO times is refused before it is read."""
    if isinstance(entry, zipfile.ZipInfo) and entry.file_size > MAX_RATIO * max(entry.compress_size, 1024):
        raise DatasetIntegrityError(
            f"{archive}: {arcname!r} would expand {entry.file_size / max(entry.compress_size, 1):.0f}x "
            f"(limit {MAX_RATIO}x); the archive looks like a zip bomb and was not extracted.")


def _copy_capped(src: Any, dst: Any, budget: int, archive: Path) -> int:
    """Copy ``src`` to ``dst``; DatasetIntegrityError once more than ``budget`` bytes came."""
    written = 0
    for chunk in iter(lambda: src.read(_CHUNK), b""):
        written += len(chunk)
        if written > budget:
            raise DatasetIntegrityError(
                f"{archive} expands past its size limit; it was not extracted (raise "
                "Source.max_bytes if the dataset really is that large).")
        dst.write(chunk)
    return written


def _extract(archive: Path, dest: Path, members: tuple[tuple[str, str], ...],
             max_bytes: int = 8 << 30) -> int:
    """Extract files of a zip/tar into ``dest``, stripping a single top folder and mapping
    paths through ``members``; returns the number of files written. Unsafe paths, a zip
    member compressed more than ``MAX_RATIO`` times, and more than ``max_bytes`` in all
    raise :class:`DatasetIntegrityError` (bytes are counted as written, not as the
    headers claim)."""
    zf, entries, opener = _open_archive(archive)
    with zf:
        tops = {n.split("/", 1)[0] for n in entries}
        strip = len(tops.pop()) + 1 if len(tops) == 1 and all("/" in n for n in entries) else 0
        written, budget = 0, max_bytes
        for arcname, entry in entries.items():
            if arcname.startswith("/") or ".." in arcname.split("/"):
                raise DatasetIntegrityError(f"Unsafe path {arcname!r} in {archive}.")
            rel = _map_member(arcname[strip:], members)
            if not rel:
                continue
            _check_ratio(archive, arcname, entry)
            out = dest.joinpath(*rel.split("/"))
            out.parent.mkdir(parents=True, exist_ok=True)
            with opener(entry) as src, open(out, "wb") as dst:
                budget -= _copy_capped(src, dst, budget, archive)
            written += 1
    return written


def _replace_folder(staged: Path, folder: Path) -> None:
    """Put the verified ``staged`` copy at ``folder``; the old copy is removed only after
    the new one is in place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():
        backup = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(folder, backup)
        os.replace(staged, folder)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(staged, folder)


def fetch(name: str, root: Optional[PathLike] = None, force: bool = False,
          progress: bool = True) -> Path:
    """Make dataset ``name`` available under ``<root or data_dir()>/<name>`` and return it.

    A present copy that verifies is reused (nothing is downloaded unless ``force``).
    Otherwise every source archive is downloaded (tqdm progress bar), checked against its
    SHA-256 when one is known, unpacked into a staging folder (size and ratio capped) and
    verified there against the manifest; only a copy that verifies replaces the dataset
    folder, so a failed ``force`` download leaves the old copy untouched. Manual-only datasets and network failures raise
    :class:`DatasetNotFoundError` with instructions; a download that does not match the
    manifest raises :class:`DatasetIntegrityError`.
    """
    info = get_info(name)
    base = Path(root).expanduser() if root is not None else data_dir()
    folder = base / name
    if not force and not _missing_layout(info, folder):
        report = verify(name, base)
        if report.ok:
            return folder
        if not info.sources:
            report.raise_for_errors()
    if not info.sources:
        raise DatasetNotFoundError(
            f"Dataset {name!r} ({info.title}) cannot be downloaded automatically and is not "
            f"at {folder}.\n" + _how_to_get(info, folder))
    staging_base = base / f".{name}.partial"
    staging = staging_base / name
    shutil.rmtree(staging_base, ignore_errors=True)
    try:
        for i, src in enumerate(info.sources):
            archive = _download(src.url, base / ".downloads" / f"{name}-{i}.archive", progress)
            try:
                if src.sha256 and sha256_file(archive) != src.sha256.lower():
                    raise DatasetIntegrityError(
                        f"Download of {src.url} is corrupt (SHA-256 differs); try again.")
                _extract(archive, staging, src.members, src.max_bytes)
            finally:
                archive.unlink(missing_ok=True)
        verify(name, staging_base, use_cache=False).raise_for_errors()
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:  # requests' errors are OSErrors
        shutil.rmtree(staging_base, ignore_errors=True)
        raise DatasetNotFoundError(
            f"Could not download dataset {name!r}: {exc}\n" + _how_to_get(info, folder)) from exc
    except BloodlibError:
        shutil.rmtree(staging_base, ignore_errors=True)  # the copy in place stays as it was
        raise
    _replace_folder(staging, folder)
    shutil.rmtree(staging_base, ignore_errors=True)
    verify(name, base)  # remembers the verification for the folder in its final place
    return folder


# ----------------------------------------------------------------------------- overview

def describe(root: Optional[PathLike] = None) -> Any:
    """The catalogue as a table: name, title, tasks, classes, licence, downloadable,
    available (layout present under ``root`` or :func:`data_dir`)."""
    return pd.DataFrame([{
        "name": d.name, "title": d.title, "tasks": ", ".join(d.tasks),
        "classes": ", ".join(d.classes), "licence": d.licence,
        "downloadable": d.downloadable, "available": is_available(d.name, root),
    } for d in CATALOGUE.values()])
