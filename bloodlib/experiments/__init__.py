"""Experiment modules: one per paper reproduction, each registering its run profiles
with :func:`bloodlib.config.register` at import and exposing the data, training,
evaluation and figure helpers that its notebook calls."""
