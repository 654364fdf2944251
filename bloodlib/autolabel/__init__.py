"""Auto-annotation: instance masks from boxes, and masks + boxes from single-cell images,
by classical segmentation (paper 1 section 3.2; paper 2's PBC masks without hand labels).

* :mod:`~bloodlib.autolabel.segment`: one cell, inside a box (``mask_in_box``: GrabCut,
  threshold or watershed in a stain space separating azure from eosin) or at the centre
  of a single-cell image (``annotate_single_cell``); its docstring describes the methods.
* :mod:`~bloodlib.autolabel.coco`: whole datasets as COCO dicts (``autolabel_boxes`` for
  BCCD / TXL-PBC boxes, ``autolabel_pbc`` for PBC; failures are listed, never dropped
  silently).
* :mod:`~bloodlib.autolabel.quality`: mask IoU against real masks (BCCD WBC masks, Zheng
  sets) per cell type, beside the IoU of the ellipse inscribed in the box (what a box
  gives for free), and a best/worst figure.
"""

from .coco import autolabel_boxes, autolabel_pbc
from .quality import QUALITY_DATASETS, QualityReport, autolabel_quality, quality_figure
from .segment import (METHODS, AutolabelError, AutoMask, annotate_single_cell, cell_kind,
                      mask_in_box, segment_in_box, segment_single_cell, stain_space)

__all__ = ["AutolabelError", "AutoMask", "METHODS", "cell_kind", "stain_space", "mask_in_box",
           "segment_in_box", "annotate_single_cell", "segment_single_cell", "autolabel_boxes",
           "autolabel_pbc", "QualityReport", "QUALITY_DATASETS", "autolabel_quality",
           "quality_figure"]
