"""Data layer: catalogue and fetching, one parser per dataset, common records,
splits, statistics, synthetic smears and torch Datasets.

Import the submodule you need (``from bloodlib.data import parsers, catalogue``);
nothing heavy is imported here.
"""
