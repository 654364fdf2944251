"""bloodlib: the library behind the blood-cell image analysis course.

Submodules are imported on demand (``import bloodlib.data``, ``bloodlib.metrics`` ...)
so that ``import bloodlib`` stays fast.
"""

__version__ = "0.1.0"
