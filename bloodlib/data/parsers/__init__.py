"""One parser per dataset: raw files -> common records (:mod:`bloodlib.data.records`).

Each takes ``root`` (the dataset folder, e.g. ``$BLOODLIB_DATA/bccd``); ``None`` asks
:func:`bloodlib.data.catalogue.dataset_path` for it.
"""

from .bccd import BCCD_CLASSES, load_bccd
from .bccd_wbc_masks import load_bccd_wbc_masks
from .c_nmc import C_NMC_CLASSES, load_c_nmc
from .mimm_sbilab import load_mimm_sbilab
from .pbc import PBC_CLASSES, load_pbc
from .segpc import load_segpc
from .sn_am import SN_AM_CLASSES, load_sn_am
from .txl_pbc import load_txl_pbc, txl_pbc_classes
from .zheng import ZHENG_LABELS, load_zheng

__all__ = ["BCCD_CLASSES", "PBC_CLASSES", "ZHENG_LABELS", "load_bccd", "load_bccd_wbc_masks",
           "load_pbc", "load_segpc", "load_txl_pbc", "load_zheng", "txl_pbc_classes",
           "C_NMC_CLASSES", "SN_AM_CLASSES", "load_c_nmc", "load_mimm_sbilab", "load_sn_am"]
