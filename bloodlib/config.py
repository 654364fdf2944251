"""Run profiles, defined once for the whole course.

A profile is a named set of knobs per experiment:

* ``quick``     – minutes on a 2-core CPU with small data; what CI and `make course` run.
* ``bench_cpu`` – the heavier CPU benchmark (tens of minutes on 2 cores).
* ``full``      – the paper's protocol (meant for a GPU).

Notebooks call :func:`get_profile` with their experiment name; the `parameters`
cell only chooses the profile name and may override single knobs.
"""

from __future__ import annotations

import ast
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from .errors import SettingError

PROFILE_NAMES = ("quick", "bench_cpu", "full")

# experiment -> profile -> knobs.  Later experiments register theirs with `register`.
_PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "setup": {  # notebook 00: the duplicate check hashes every image (~15 s on 2 cores)
        "quick": {"samples_per_grid": 8, "hash_duplicates": True, "synthetic_images": 4},
        "bench_cpu": {"samples_per_grid": 8, "hash_duplicates": True, "synthetic_images": 8},
        "full": {"samples_per_grid": 12, "hash_duplicates": True, "synthetic_images": 8},
    },
}


def register(experiment: str, profiles: Mapping[str, Mapping[str, Any]]) -> None:
    """Register an experiment's knobs for every profile (all three must be given)."""
    missing = set(PROFILE_NAMES) - set(profiles)
    if missing:
        raise ValueError(f"Experiment {experiment!r} lacks profiles {sorted(missing)}.")
    _PROFILES[experiment] = {p: dict(profiles[p]) for p in PROFILE_NAMES}


def experiments() -> list[str]:
    """Names of the experiments that have profiles."""
    return sorted(_PROFILES)


def get_profile(experiment: str, profile: str = "quick", **overrides: Any) -> Mapping[str, Any]:
    """The knobs of ``experiment`` under ``profile``, with ``overrides`` applied.

    Unknown experiments, profiles or override names raise ``ValueError`` listing the
    valid ones, so a typo in a notebook's parameters fails loudly.
    """
    if profile not in PROFILE_NAMES:
        raise SettingError(f"Unknown profile {profile!r}; choose one of {PROFILE_NAMES}.")
    if experiment not in _PROFILES:
        raise SettingError(f"Unknown experiment {experiment!r}; known: {experiments()}.")
    knobs = dict(_PROFILES[experiment][profile])
    unknown = set(overrides) - set(knobs)
    if unknown:
        raise SettingError(f"Unknown setting(s) {sorted(unknown)} for {experiment!r}; "
                         f"valid: {sorted(knobs)}.")
    knobs.update({k: v for k, v in overrides.items() if v is not None})
    knobs["profile"] = profile
    return MappingProxyType(knobs)


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` command-line arguments as knob overrides: each value read as a Python
    literal (``0.1``, ``True``, ``None``, ``[1, 2]``) where it is one, else kept as text."""
    out: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ValueError(f"Override {arg!r} is not KEY=VALUE (for example lr=0.05).")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out
