"""Figures: each function returns a Figure with the expected content, empty inputs work."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from bloodlib import viz  # noqa: E402
from bloodlib.errors import MaskError  # noqa: E402


@pytest.fixture
def image():
    return np.full((60, 80, 3), 220, np.uint8)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _rects(fig):
    return [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]


def test_class_colors_fixed_and_aliases():
    assert viz.class_color("WBC") == viz.class_color("wbc")
    assert viz.class_color("Platelets") == viz.class_color("platelet")
    assert viz.class_color("unknown-x") == viz.class_color("unknown-x")  # stable fallback
    assert viz.class_color("neutrophil") != viz.class_color("lymphocyte")


def test_show_image_accepts_chw_and_gray(image):
    fig = viz.show_image(np.moveaxis(image, -1, 0) / 255.0, title="t")
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "t"
    assert isinstance(viz.show_image(image[..., 0]), Figure)


def test_draw_detections_one_rectangle_per_kept_box(image):
    boxes = [[5, 5, 30, 30], [40, 10, 70, 50], [10, 35, 20, 55]]
    masks = np.zeros((3, 60, 80), bool)
    masks[0, 10:20, 10:20] = True
    fig = viz.draw_detections(image, boxes, [1, 2, 3], scores=[0.9, 0.6, 0.2], masks=masks,
                              class_names=["bg", "WBC", "RBC", "Platelets"], score_threshold=0.5)
    assert isinstance(fig, Figure)
    assert len(_rects(fig)) == 2
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["WBC 0.90", "RBC 0.60"]
    drawn = fig.axes[0].images[0].get_array()
    assert not np.array_equal(drawn[15, 15], image[15, 15])  # mask blended in


def test_draw_detections_empty_and_mismatch(image):
    fig = viz.draw_detections(image, np.zeros((0, 4)), [], scores=[])
    assert len(_rects(fig)) == 0
    with pytest.raises(ValueError):
        viz.draw_detections(image, [[0, 0, 1, 1]], ["a", "b"])


def test_draw_detections_on_given_axes(image):
    fig, ax = plt.subplots(1, 2)
    out = viz.draw_detections(image, [[1, 1, 9, 9]], ["wbc"], ax=ax[1])
    assert out is fig and len(ax[1].patches) == 1


def test_overlay_mask_variants(image):
    label_map = np.zeros((60, 80), np.int64)
    label_map[:10, :10] = 2
    out = viz.overlay_mask(image, label_map, {2: "red"}, alpha=0.5)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (238, 110, 110) and tuple(out[-1, -1]) == (220, 220, 220)
    assert viz.overlay_mask(image, label_map > 0, "blue").shape == (60, 80, 3)
    with pytest.raises(MaskError):
        viz.overlay_mask(image, np.zeros((5, 5), bool))


def test_sample_grid_axes_count(image):
    fig = viz.sample_grid([image] * 5, titles=list("abcde"), ncols=4)
    assert len(fig.axes) == 8 and fig.axes[4].get_title() == "e"
    assert len(viz.sample_grid([]).axes) == 1


def test_plot_history_panels():
    hist = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.7, 0.5],
            "val_dice": [0.5, 0.7, 0.8]}
    fig = viz.plot_history(hist)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 1
    assert len(viz.plot_history(pd.DataFrame(hist), metrics=["val_dice"]).axes) == 1
    assert len(viz.plot_history({}).axes) == 1
    with pytest.raises(KeyError):
        viz.plot_history(hist, metrics=["nope"])


def test_pr_and_roc_curves():
    r = np.linspace(0, 1, 11)
    fig = viz.plot_pr_curves({"WBC": (r, 1 - r / 2, 0.75), "RBC": (r, 1 - r)})
    assert len(fig.axes[0].lines) == 2
    assert "AP=0.750" in fig.axes[0].get_legend().get_texts()[0].get_text()
    fig = viz.plot_roc_curves({"MCNet": (r, np.sqrt(r), 0.9)})
    assert len(fig.axes[0].lines) == 2  # curve + chance diagonal
    assert isinstance(viz.plot_pr_curves({}), Figure)


def test_confusion_matrix_labels_and_normalize():
    cm = np.array([[5, 1, 0], [2, 8, 0], [0, 0, 0]])
    labels = ["neutrophil", "lymphocyte", "platelet"]
    fig = viz.plot_confusion_matrix(cm, labels, title="cm")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert "8" in [t.get_text() for t in ax.texts]
    fig = viz.plot_confusion_matrix(cm, labels, normalize=True)
    assert "0.80" in [t.get_text() for t in fig.axes[0].texts]
    with pytest.raises(ValueError):
        viz.plot_confusion_matrix(cm, labels[:2])
    assert isinstance(viz.plot_confusion_matrix(np.zeros((0, 0)), []), Figure)


def test_class_balance_bars():
    fig = viz.plot_class_balance({"RBC": 100, "WBC": 10, "Platelets": 20})
    assert len(fig.axes[0].patches) == 3
    assert isinstance(viz.plot_class_balance(pd.Series(dtype=float)), Figure)


def test_paper_comparison_grouped_bars():
    from bloodlib.results import compare_with_paper

    df = compare_with_paper({"AP50": 0.9, "recall": 0.8}, "paper1", "table2", {"model": "MCNet"})
    fig = viz.plot_paper_comparison(df)
    assert len(fig.axes[0].patches) == 4
    empty = df.iloc[:0]
    assert isinstance(viz.plot_paper_comparison(empty), Figure)
    with pytest.raises(ValueError):
        viz.plot_paper_comparison(pd.DataFrame({"a": [1]}))


def test_confusion_panels_draw_one_matrix_per_panel_with_an_extra_column():
    """Issue 26: the experiments' confusion figures share viz.confusion_panels."""
    import numpy as np

    from bloodlib.experiments import maskrcnn_backbones as mb
    from bloodlib.viz import confusion_panels
    cm = np.array([[3, 1, 0], [0, 2, 2]])
    fig = confusion_panels({"a": (cm, ["x", "y"], ["x", "y", "none"]),
                            "b": (cm, ["x", "y"], ["x", "y", "none"])}, title="t")
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "a"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["x", "y", "none"]
    with pytest.raises(ValueError, match="does not match"):
        confusion_panels({"a": (cm, ["x", "y"], ["x", "y"])})
    results = {"resnet50": {"confusion": cm, "confusion_labels": ["x", "y", "none"],
                            "table5": {"top1_accuracy": 0.5}}}
    assert "0.50" in mb.confusion_figure(results).axes[0].get_title()
