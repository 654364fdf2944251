"""bloodlib: the library behind the blood-cell image analysis course.

Submodules are imported on demand (``import bloodlib.data``, ``bloodlib.metrics`` ...)
so that ``import bloodlib`` stays fast.
"""

import os as _os

# Nothing reaches the network unless a user asks to download: albumentations would
# otherwise check PyPI for a newer version on import.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
