"""Figures for the course: images with boxes and masks, sample grids, training curves,
PR/ROC curves, confusion matrices, class balance and paper-vs-ours bars.

Every function returns a matplotlib ``Figure`` and never calls ``show``. New figures are
detached from pyplot (closed right after creation) so a notebook shows them once, when
returned or displayed, and they are freed with the last reference. Colours are fixed per
class name (:data:`CLASS_COLORS`), so a class looks the same in every figure.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping, Optional, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import is_color_like, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from .errors import MaskError

Color = Union[str, tuple]

# One colour per class name (lower-case); BCCD/TXL-PBC cell types, PBC types, mask classes.
CLASS_COLORS: dict[str, str] = {
    "wbc": "#1f9bcf", "rbc": "#d62728", "platelet": "#ff7f0e",
    "basophil": "#3b4cc0", "eosinophil": "#e6550d", "erythroblast": "#8c564b",
    "ig": "#bcbd22", "lymphocyte": "#1f77b4", "monocyte": "#2ca02c",
    "neutrophil": "#9467bd", "background": "#000000", "cytoplasm": "#2ca02c",
    "nucleus": "#6a3d9a", "all": "#e7298a", "mm": "#66a61e",
}
_ALIASES = {"white_blood_cell": "wbc", "red_blood_cell": "rbc", "thrombocyte": "platelet",
            "immature_granulocyte": "ig", "immature_granulocytes": "ig"}
_PAPER_COLOR, _OURS_COLOR = "#8c8c8c", "#1f77b4"


def class_color(name: Union[str, int], index: Optional[int] = None) -> tuple[float, float, float]:
    """RGB (0-1) for a class: the fixed palette, else a stable tab20 colour."""
    if isinstance(name, str):
        key = name.strip().lower().replace(" ", "_").replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in CLASS_COLORS and key.endswith("s") and key[:-1] in CLASS_COLORS:
            key = key[:-1]
        if key in CLASS_COLORS:
            return to_rgb(CLASS_COLORS[key])
        index = zlib.crc32(key.encode()) if index is None else index
    else:
        index = int(name) if index is None else index
    return tuple(plt.get_cmap("tab20")(index % 20)[:3])


def _new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6, 4),
                **kw: Any) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, **kw)
    plt.close(fig)  # detach from pyplot: shown only when returned/displayed
    return fig, axes


def finish_figure(fig: Figure, title: str = "") -> Figure:
    """Title (when given), tight layout, detached from pyplot: the figure is shown only
    when returned or displayed. Every figure function of the experiments ends here."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _figure_and_ax(ax: Optional[Axes], figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, axes = _new_figure(1, 1, figsize)
    return fig, axes[0, 0]


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _as_image(image: Any) -> np.ndarray:
    """(H, W, 3|4) or (H, W) array for display; CHW tensors and [0, 1] floats accepted."""
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"Expected an image of shape (H, W), (H, W, C) or (C, H, W); got {arr.shape}.")
    return arr


def _as_rgb_uint8(image: Any) -> np.ndarray:
    arr = _as_image(image)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return arr[..., :3]


def _text_color(color: Color) -> str:
    r, g, b = to_rgb(color)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.6 else "white"


def show_image(image: Any, ax: Optional[Axes] = None, title: Optional[str] = None) -> Figure:
    """Show one image (RGB, grayscale, or a CHW tensor) without axes."""
    arr = _as_image(image)
    h, w = arr.shape[:2]
    fig, ax = _figure_and_ax(ax, (5, max(1.5, 5 * h / max(w, 1))))
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def overlay_mask(image: Any, mask: Any, colors: Any = None, alpha: float = 0.4) -> np.ndarray:
    """Blend a mask onto an image; returns RGB uint8 (H, W, 3).

    ``mask`` is a class map (H, W) of ints (0 = background, left unchanged) with
    ``colors`` a sequence or dict indexed by class (default tab20), an instance stack
    (N, H, W) of booleans/probabilities (> 0.5) with one colour per instance, or one
    boolean (H, W) mask with one colour.
    """
    rgb = _as_rgb_uint8(image)
    m = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask)
    if m.shape[-2:] != rgb.shape[:2]:
        raise MaskError(f"Mask shape {m.shape} does not match image size {rgb.shape[:2]}.")
    out = rgb.astype(np.float64)

    def paint(region: np.ndarray, color: Color) -> None:
        out[region] = (1 - alpha) * out[region] + alpha * 255 * np.asarray(to_rgb(color))

    if m.ndim == 3:  # instance stack
        for i, inst in enumerate(m):
            c = colors if is_color_like(colors) else (
                colors[i] if colors is not None else class_color(i))
            paint(inst > 0.5 if inst.dtype != bool else inst, c)
    elif m.dtype == bool:
        paint(m, colors if colors is not None else class_color("nucleus"))
    elif m.ndim == 2:
        for label in np.unique(m):
            if label == 0:
                continue
            if colors is None:
                c = class_color(int(label))
            elif isinstance(colors, Mapping):
                c = colors.get(int(label), class_color(int(label)))
            else:
                c = colors[int(label)] if int(label) < len(colors) else class_color(int(label))
            paint(m == label, c)
    else:
        raise MaskError(f"Mask must be (H, W) or (N, H, W); got shape {m.shape}.")
    return out.round().astype(np.uint8)


def _label_name(label: Any, class_names: Any) -> str:
    if isinstance(label, str):
        return label
    label = int(label)
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def draw_detections(image: Any, boxes: Any, labels: Sequence[Any], scores: Optional[Any] = None,
                    masks: Optional[Any] = None, class_names: Any = None,
                    class_colors: Optional[Mapping[str, Color]] = None,
                    score_threshold: float = 0.0, ax: Optional[Axes] = None,
                    title: Optional[str] = None) -> Figure:
    """Draw boxes (N, 4) ``xyxy`` in pixels, with label (and score) and optional masks.

    ``labels`` are names or integer ids; ids are named through ``class_names`` (a
    sequence indexed by id, or a dict id -> name). Detections below ``score_threshold``
    are skipped. ``masks`` (N, H, W) are blended semi-transparently in the box colour.
    """
    arr = _as_rgb_uint8(image)
    b = np.asarray(boxes.detach().cpu().numpy() if hasattr(boxes, "detach") else boxes,
                   dtype=float).reshape(-1, 4)
    labels = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    s = None if scores is None else np.asarray(
        scores.detach().cpu().numpy() if hasattr(scores, "detach") else scores, dtype=float)
    if len(labels) != len(b) or (s is not None and len(s) != len(b)):
        raise ValueError(f"Got {len(b)} boxes, {len(labels)} labels and "
                         f"{'no' if s is None else len(s)} scores; they must match.")
    keep = np.ones(len(b), bool) if s is None else s >= score_threshold
    names = [_label_name(lab, class_names) for lab in labels]
    colors = [to_rgb((class_colors or {}).get(n, class_color(n))) for n in names]
    if masks is not None and len(b):
        m = np.asarray(masks.detach().cpu().numpy() if hasattr(masks, "detach") else masks)
        m = m.reshape(len(b), *m.shape[-2:])
        arr = overlay_mask(arr, m[keep], [c for c, k in zip(colors, keep) if k], alpha=0.4)
    h, w = arr.shape[:2]
    own = ax is None
    fig, ax = _figure_and_ax(ax, (7, max(2.0, 7 * h / max(w, 1))))
    ax.imshow(arr)
    lw = max(1.5, min(w, h) / 250)
    for i in np.flatnonzero(keep):
        x1, y1, x2, y2 = b[i]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colors[i], lw=lw))
        text = names[i] if s is None else f"{names[i]} {s[i]:.2f}"
        ax.text(x1, y1, text, fontsize=7, va="bottom", ha="left", color=_text_color(colors[i]),
                bbox=dict(facecolor=colors[i], alpha=0.8, pad=1, lw=0), clip_on=True)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if own:
        fig.tight_layout()
    return fig


def sample_grid(images: Sequence[Any], titles: Optional[Sequence[str]] = None, ncols: int = 4,
                size: float = 2.5) -> Figure:
    """Images in a grid of ``ncols`` columns, ``size`` inches per cell; unused cells blank."""
    n = len(images)
    if n == 0:
        fig, axes = _new_figure(1, 1, (size * 2, size))
        _empty(axes[0, 0], "no images")
        return fig
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = _new_figure(nrows, ncols, (size * ncols, size * nrows))
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < n:
            arr = _as_image(images[k])
            ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None)
            if titles is not None and k < len(titles):
                ax.set_title(str(titles[k]), fontsize=9)
    fig.tight_layout()
    return fig


def detection_grid(samples: Sequence[Mapping[str, Any]], ncols: int = 3, size: float = 3.5) -> Figure:
    """Several annotated images in a grid; each sample is a dict of
    :func:`draw_detections` arguments (``image``, ``boxes``, ``labels``, optional
    ``scores``, ``masks``, ``title``)."""
    n = len(samples)
    ncols = max(1, min(ncols, n or 1))
    nrows = max(1, -(-n // ncols))
    fig, axes = _new_figure(nrows, ncols, (size * ncols, size * nrows * 0.8))
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < n:
            draw_detections(ax=ax, **samples[k])
    if n == 0:
        _empty(axes[0, 0], "no images")
    fig.tight_layout()
    return fig


_SPLIT_PREFIXES = ("train_", "val_", "valid_", "test_", "train/", "val/", "metrics/")


def _base_name(col: str) -> str:
    for p in _SPLIT_PREFIXES:
        if col.startswith(p):
            return col[len(p):]
    return col


def plot_history(history: Union[pd.DataFrame, Mapping[str, Sequence[float]]],
                 metrics: Optional[Sequence[str]] = None, title: Optional[str] = None) -> Figure:
    """Curves vs epoch: losses on the left panel, other metrics on the right.

    ``history`` is a DataFrame or a dict of lists (an ``epoch`` column is used as x when
    present). ``metrics`` picks columns (default: all numeric ones but epoch). Train and
    validation versions of a metric share a colour; validation is dashed.
    """
    df = history if isinstance(history, pd.DataFrame) else pd.DataFrame(
        {k: pd.Series(v, dtype=float) for k, v in history.items()})
    x = df["epoch"].to_numpy() if "epoch" in df else np.arange(1, len(df) + 1)
    cols = list(metrics) if metrics is not None else [
        c for c in df.columns if c != "epoch" and pd.api.types.is_numeric_dtype(df[c])]
    missing = [c for c in cols if c not in df]
    if missing:
        raise KeyError(f"History has no column(s) {missing}; available: {list(df.columns)}.")
    cols = [c for c in cols if df[c].notna().any()]
    groups = [g for g in ([c for c in cols if "loss" in c.lower()],
                          [c for c in cols if "loss" not in c.lower()]) if g]
    fig, axes = _new_figure(1, max(1, len(groups)), (5.5 * max(1, len(groups)), 3.8))
    if not groups:
        _empty(axes[0, 0], "no history")
        return fig
    bases = list(dict.fromkeys(_base_name(c) for c in cols))
    palette = dict(zip(bases, sns.color_palette("tab10", len(bases))))
    for ax, group in zip(axes.flat, groups):
        for c in group:
            dashed = c.startswith(("val", "valid", "test"))
            ax.plot(x, df[c].to_numpy(dtype=float), label=c, color=palette[_base_name(c)],
                    ls="--" if dashed else "-", marker="o" if len(df) <= 30 else None, ms=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss" if "loss" in group[0].lower() else "metric")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _curve_figure(curves: Mapping[str, Sequence[Any]], title: str, xlabel: str, ylabel: str,
                  score_name: str, diagonal: bool) -> Figure:
    fig, axes = _new_figure(1, 1, (5, 4.5))
    ax = axes[0, 0]
    if not curves:
        _empty(ax, "no curves")
        return fig
    for k, (name, curve) in enumerate(curves.items()):
        x, y = np.asarray(curve[0], float), np.asarray(curve[1], float)
        label = name if len(curve) < 3 or curve[2] is None else f"{name} ({score_name}={float(curve[2]):.3f})"
        ax.plot(x, y, label=label, color=class_color(name, None if isinstance(name, str) else k), lw=1.8)
    if diagonal:
        ax.plot([0, 1], [0, 1], ls=":", color="0.5", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left" if not diagonal else "lower right")
    fig.tight_layout()
    return fig


def plot_pr_curves(curves: Mapping[str, Sequence[Any]], title: str = "Precision-recall") -> Figure:
    """One precision-recall line per name: ``{name: (recall, precision[, ap])}``."""
    return _curve_figure(curves, title, "recall", "precision", "AP", diagonal=False)


def plot_roc_curves(curves: Mapping[str, Sequence[Any]], title: str = "ROC") -> Figure:
    """One ROC line per name: ``{name: (fpr, tpr[, auc])}``, with the chance diagonal."""
    return _curve_figure(curves, title, "false positive rate", "true positive rate", "AUC",
                         diagonal=True)


def plot_confusion_matrix(cm: Any, labels: Sequence[str], normalize: bool = False,
                          title: Optional[str] = None, cmap: str = "Blues",
                          ax: Optional[Axes] = None, col_labels: Optional[Sequence[str]] = None,
                          colorbar: bool = True) -> Figure:
    """Annotated seaborn heatmap; rows are true classes, columns predictions.

    ``normalize=True`` divides each row by its total (rows without samples stay 0).
    ``col_labels`` name the columns when they differ from the rows (an extra "none" or
    "background" column); ``ax`` draws into a panel of a larger figure.
    """
    m = np.asarray(cm, dtype=float)
    rows, cols = list(labels), list(col_labels if col_labels is not None else labels)
    if m.ndim != 2 or m.shape != (len(rows), len(cols)):
        raise ValueError(f"Confusion matrix of shape {m.shape} does not match "
                         f"{len(rows)} x {len(cols)} labels.")
    n = max(len(rows), len(cols))
    size = max(4.0, 0.55 * n + 2.5)
    fig, ax = _figure_and_ax(ax, (size + 1, size))
    if n == 0:
        _empty(ax, "empty confusion matrix")
        return fig
    if normalize:
        totals = m.sum(axis=1, keepdims=True)
        m = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    integer = not normalize and np.allclose(m, np.round(m))
    sns.heatmap(m, annot=n <= 30, fmt=".0f" if integer else ".2f", cmap=cmap, square=True,
                xticklabels=cols, yticklabels=rows, ax=ax, linewidths=0.5,
                linecolor="white", vmin=0, vmax=1 if normalize else None, cbar=colorbar,
                annot_kws={"fontsize": 7 if n > 8 else 9},
                cbar_kws={"label": "fraction of true class" if normalize else "count",
                          "shrink": 0.8} if colorbar else None)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.tick_params(axis="x", rotation=45)
    ax.tick_params(axis="y", rotation=0)
    for t in ax.get_xticklabels():
        t.set_ha("right")
    ax.set_title(title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"))
    fig.tight_layout()
    return fig


def confusion_panels(panels: Mapping[str, tuple[Any, Sequence[str], Sequence[str]]],
                     title: str = "", normalize: bool = False, panel_size: float = 4.6) -> Figure:
    """One confusion matrix per panel: ``panels`` maps a panel title to ``(matrix,
    row labels, column labels)`` (rows true, columns predicted)."""
    fig, axes = _new_figure(1, max(1, len(panels)),
                            (panel_size * max(1, len(panels)), panel_size * 0.9))
    for ax, (name, (cm, rows, cols)) in zip(axes[0], panels.items()):
        plot_confusion_matrix(cm, rows, normalize=normalize, title=name, ax=ax,
                              col_labels=cols, colorbar=False)
    return finish_figure(fig, title)


def plot_class_balance(counts: Union[Mapping[str, float], pd.Series],
                       title: str = "Instances per class") -> Figure:
    """Horizontal bars of counts per class (largest on top), labelled with count and share."""
    s = pd.Series(counts, dtype=float).sort_values(ascending=True)
    fig, axes = _new_figure(1, 1, (6, max(2.0, 0.4 * len(s) + 1)))
    ax = axes[0, 0]
    if s.empty:
        _empty(ax, "no classes")
        return fig
    total = s.sum()
    colors = [class_color(str(name)) for name in s.index]
    bars = ax.barh([str(i) for i in s.index], s.to_numpy(), color=colors)
    share = [f"{v:.0f} ({100 * v / total:.1f}%)" if total else f"{v:.0f}" for v in s]
    ax.bar_label(bars, share, padding=3, fontsize=8)
    ax.set_xlim(0, s.max() * 1.25 if s.max() > 0 else 1)
    ax.set_xlabel("count")
    ax.set_title(title)
    sns.despine(ax=ax)
    fig.tight_layout()
    return fig


def plot_paper_comparison(df: pd.DataFrame, title: Optional[str] = None) -> Figure:
    """Grouped bars, paper vs ours per metric, from :func:`bloodlib.results.compare_with_paper`."""
    missing = {"metric", "paper", "ours"} - set(df.columns)
    if missing:
        raise ValueError(f"Comparison table lacks column(s) {sorted(missing)}; "
                         "build it with bloodlib.results.compare_with_paper().")
    fig, axes = _new_figure(1, 1, (max(4.0, 1.3 * len(df) + 2), 4))
    ax = axes[0, 0]
    if df.empty:
        _empty(ax, "nothing to compare")
        return fig
    x = np.arange(len(df))
    names = df["label"] if "label" in df else df["metric"]
    width = 0.38
    for offset, col, color in ((-width / 2, "paper", _PAPER_COLOR), (width / 2, "ours", _OURS_COLOR)):
        bars = ax.bar(x + offset, df[col].to_numpy(dtype=float), width, label=col, color=color)
        ax.bar_label(bars, [("" if np.isnan(v) else f"{v:.3g}") for v in df[col].astype(float)],
                     fontsize=7, padding=2)
    ax.set_xticks(x, [str(n) for n in names], rotation=30 if len(df) > 4 else 0,
                  ha="right" if len(df) > 4 else "center")
    units = df["unit"].unique() if "unit" in df else []
    ax.set_ylabel(f"value ({units[0]})" if len(units) == 1 else "value")
    both = df[["paper", "ours"]].to_numpy(dtype=float)
    top = np.nanmax(both) if np.isfinite(both).any() else 1.0
    ax.set_ylim(min(0.0, np.nanmin(both) if np.isfinite(both).any() else 0.0), top * 1.15 if top > 0 else 1)
    ax.legend(fontsize=8)
    caption = df.attrs.get("caption")
    ax.set_title(title or (f"{df.attrs.get('paper', '')} {df.attrs.get('table', '')}: paper vs ours"
                           if caption else "Paper vs ours"))
    sns.despine(ax=ax)
    fig.tight_layout()
    return fig
