"""Run profiles, defined once for the whole course.

A profile is a named set of knobs per experiment:

* ``quick``     – minutes on a 2-core CPU with small data; what CI and `make course` run.
* ``bench_cpu`` – the heavier CPU benchmark (tens of minutes on 2 cores).
* ``full``      – the paper's protocol (meant for a GPU).

Notebooks call :func:`get_profile` with their experiment name; the `parameters`
cell only chooses the profile name and may override single knobs.

Each experiment registers a typed schema with its profiles: a frozen dataclass with
nested sections (:mod:`bloodlib.experiments.configs`). Every profile is checked against it
when registered, :func:`get_config` returns a profile as an instance of it, and overrides
name a setting by its path (``yolo.epochs=5``) or its flat name (``yolo_epochs=5``); a wrong
name or a value of the wrong type raises :class:`~bloodlib.errors.SettingError`.
The experiments' functions read the typed settings (``run.settings`` in a notebook:
``settings.yolo.epochs``); :func:`get_profile` keeps the flat, read-only view that overrides,
results JSON and the bench command use.
"""

from __future__ import annotations

import ast
import dataclasses
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence, Union, get_args, get_origin, get_type_hints

from .errors import SettingError

PROFILE_NAMES = ("quick", "bench_cpu", "full")


@dataclasses.dataclass(frozen=True)
class SetupConfig:
    """Notebook 00's settings."""

    hash_duplicates: bool
    samples_per_grid: int
    synthetic_images: int


# experiment -> profile -> knobs.  Later experiments register theirs with `register`.
_PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "setup": {  # notebook 00: the duplicate check hashes every image (~15 s on 2 cores)
        "quick": {"samples_per_grid": 8, "hash_duplicates": True, "synthetic_images": 4},
        "bench_cpu": {"samples_per_grid": 8, "hash_duplicates": True, "synthetic_images": 8},
        "full": {"samples_per_grid": 12, "hash_duplicates": True, "synthetic_images": 8},
    },
}
# experiment -> its typed schema (a frozen dataclass)
_SCHEMAS: dict[str, type] = {"setup": SetupConfig}


def register(experiment: str, profiles: Mapping[str, Mapping[str, Any]],
             schema: Optional[type] = None) -> None:
    """Register an experiment's knobs for every profile (all three must be given), each
    checked against ``schema`` (a frozen dataclass, see :func:`setting_types`)."""
    missing = set(PROFILE_NAMES) - set(profiles)
    if missing:
        raise ValueError(f"Experiment {experiment!r} lacks profiles {sorted(missing)}.")
    tables = {p: dict(profiles[p]) for p in PROFILE_NAMES}
    if schema is not None:
        for name, knobs in tables.items():
            from_flat(schema, knobs, where=f"{experiment}'s {name!r} profile")
        _SCHEMAS[experiment] = schema
    _PROFILES[experiment] = tables


# ----------------------------------------------------------------------------- typed schemas
def _sections(schema: type) -> dict[str, tuple[tuple[str, ...], Any]]:
    """Flat setting name -> (path in ``schema``, type). A section's field ``f`` is the flat
    ``<section>_f``; its field ``enabled`` is the flat ``<section>``."""
    out: dict[str, tuple[tuple[str, ...], Any]] = {}
    for name, hint in get_type_hints(schema).items():
        if dataclasses.is_dataclass(hint):
            for field, sub in get_type_hints(hint).items():
                flat = name if field == "enabled" else f"{name}_{field}"
                out[flat] = ((name, field), sub)
        else:
            out[name] = ((name,), hint)
    return out


def setting_types(experiment: str) -> dict[str, Any]:
    """Every setting of ``experiment`` by its path (``yolo.epochs``) -> its type."""
    return {".".join(path): hint for path, hint in _sections(_schema(experiment)).values()}


def _check_known(experiment: str, table: Mapping[str, Any]) -> None:
    if experiment not in table:
        raise SettingError(f"Unknown experiment {experiment!r}; known: {experiments()} "
                           "(import bloodlib.experiments to register every experiment's).")


def _schema(experiment: str) -> type:
    _check_known(experiment, _SCHEMAS)
    return _SCHEMAS[experiment]


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if get_origin(hint) is Union:
        return any(_matches(value, arg) for arg in get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(value, bool) and hint in (int, float):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    if hint is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, get_origin(hint) or hint)


def _type_name(hint: Any) -> str:
    if get_origin(hint) is None and isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _check(experiment: str, flat: str, hint: Any, value: Any) -> None:
    if not _matches(value, hint):
        raise SettingError(f"Setting {flat!r} of {experiment!r} must be {_type_name(hint)}, "
                           f"got {value!r} ({type(value).__name__}).")


def from_flat(schema: type, knobs: Mapping[str, Any], where: str = "") -> Any:
    """The ``schema`` instance holding the flat ``knobs`` (every field given, each of its
    type); :class:`SettingError` names what is missing, unknown or of the wrong type."""
    fields = _sections(schema)
    given = {k: v for k, v in knobs.items() if k != "profile"}
    missing, unknown = set(fields) - set(given), set(given) - set(fields)
    if missing or unknown:
        raise SettingError(f"{where or schema.__name__}: missing settings {sorted(missing)}, "
                           f"unknown settings {sorted(unknown)}.")
    nested: dict[str, Any] = {}
    for flat, value in given.items():
        path, hint = fields[flat]
        _check(where or schema.__name__, flat, hint, value)
        if len(path) == 1:
            nested[path[0]] = value
        else:
            nested.setdefault(path[0], {})[path[1]] = value
    hints = get_type_hints(schema)
    return schema(**{k: hints[k](**v) if isinstance(v, dict) and dataclasses.is_dataclass(hints[k])
                     else v for k, v in nested.items()})


def to_flat(config: Any) -> dict[str, Any]:
    """The flat settings of a typed ``config`` (the inverse of :func:`from_flat`)."""
    out: dict[str, Any] = {}
    for flat, (path, _) in _sections(type(config)).items():
        value = config
        for part in path:
            value = getattr(value, part)
        out[flat] = value
    return out


def flat_name(experiment: str, key: str) -> str:
    """The flat name of a setting given by its path (``yolo.epochs`` -> ``yolo_epochs``) or
    by its flat name; :class:`SettingError` listing the valid paths when there is none."""
    fields = _sections(_schema(experiment))
    if key in fields:
        return key
    for flat, (path, _) in fields.items():
        if ".".join(path) == key:
            return flat
    raise SettingError(f"Unknown setting {key!r} for {experiment!r}; valid: "
                       f"{sorted('.'.join(p) for p, _ in fields.values())}.")


def get_config(experiment: str, profile: str = "quick", **overrides: Any) -> Any:
    """``experiment``'s ``profile`` with ``overrides`` as an instance of its typed schema
    (``get_config("mcnet", "quick", **{"yolo.epochs": 5}).yolo.epochs == 5``)."""
    return from_flat(_schema(experiment), get_profile(experiment, profile, **overrides),
                     where=f"{experiment}'s {profile!r} profile")


def typed(experiment: str, knobs: Mapping[str, Any]) -> Any:
    """A run's flat ``knobs`` (a profile with overrides, plus the session's own entries such
    as ``checkpoint_dir``) as an instance of ``experiment``'s schema."""
    fields = _sections(_schema(experiment))
    return from_flat(_schema(experiment), {k: v for k, v in knobs.items() if k in fields},
                     where=f"{experiment}'s settings")


def experiments() -> list[str]:
    """Names of the experiments that have profiles."""
    return sorted(_PROFILES)


def get_profile(experiment: str, profile: str = "quick", **overrides: Any) -> Mapping[str, Any]:
    """The knobs of ``experiment`` under ``profile``, with ``overrides`` applied.

    Unknown experiments, profiles or override names raise :class:`SettingError` (a
    ``ValueError``) listing the valid ones, so a typo in a notebook's parameters fails
    loudly.
    """
    if profile not in PROFILE_NAMES:
        raise SettingError(f"Unknown profile {profile!r}; choose one of {PROFILE_NAMES}.")
    _check_known(experiment, _PROFILES)
    knobs = dict(_PROFILES[experiment][profile])
    schema = _SCHEMAS.get(experiment)
    fields = _sections(schema) if schema else {}
    for key, value in overrides.items():
        flat = flat_name(experiment, key) if schema else key
        if flat not in knobs:
            raise SettingError(f"Unknown setting(s) {[key]} for {experiment!r}; "
                               f"valid: {sorted(knobs)}.")
        if schema:
            _check(experiment, flat, fields[flat][1], value)
        knobs[flat] = value
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
