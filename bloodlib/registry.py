"""Registries that low layers own and high layers fill (detectron2's ``Registry``).

A registry maps names to objects; modules register into it when imported, and code
below them looks names up without importing them::

    TRAINERS = Registry("experiment trainer")

    @TRAINERS.register("wcsegnet", instant={"epochs": 1})
    def train_main(run, model=None): ...

:data:`TRAINERS` holds each experiment's main training (``bloodlib train``); the
experiments register theirs when :mod:`bloodlib.experiments` is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, Optional, TypeVar

from .errors import SettingError

T = TypeVar("T")

__all__ = ["Registry", "TrainEntry", "TRAINERS"]


class Registry(Generic[T]):
    """Names -> objects, each name registered once; unknown names raise a KeyError that
    lists the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            raise KeyError(f"A {self.kind} named {name!r} is registered already.")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise SettingError(f"No {self.kind} named {name!r}; known: "
                               f"{sorted(self._items)}.") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclass(frozen=True)
class TrainEntry:
    """An experiment's main training: ``fn(run, model) -> metrics`` trains ``model``
    (default ``default_model``; one of ``models``) with the run's knobs, evaluates it on
    the test split and writes the results JSON. ``instant`` are the knob overrides that
    shrink any profile to two optimisation steps on a handful of images (instant tests,
    ``bloodlib train --instant``)."""

    experiment: str
    fn: Callable[..., Mapping[str, float]]
    models: tuple[str, ...]
    default_model: str
    instant: Mapping[str, Any] = field(default_factory=dict)
    #: overrides that make the ``instant`` run train for about ``seconds`` (GPU check)
    timed: Callable[[float], Mapping[str, Any]] = lambda seconds: {}
    #: the optimisation steps of the notebook's run under a profile's knobs (projections)
    planned_steps: Callable[[Mapping[str, Any]], int] = lambda knobs: 0
    #: a knob whose value in the profile is the default model (else ``default_model``)
    model_knob: Optional[str] = None
    #: overrides that give the training a wall-time budget (``bloodlib bench --budget``)
    budget: Callable[[float], Mapping[str, Any]] = lambda seconds: {"time_budget_s": seconds}


class _Trainers(Registry[TrainEntry]):
    def register(self, experiment: str, *, models: tuple[str, ...], default_model: str,
                 instant: Optional[Mapping[str, Any]] = None,
                 timed: Optional[Callable[[float], Mapping[str, Any]]] = None,
                 planned_steps: Optional[Callable[[Mapping[str, Any]], int]] = None,
                 budget: Optional[Callable[[float], Mapping[str, Any]]] = None,
                 model_knob: Optional[str] = None) -> Callable[[Callable[..., Mapping[str, float]]], Callable[..., Mapping[str, float]]]:
        """Decorator: register ``fn`` as ``experiment``'s main training (see
        :class:`TrainEntry` for the rest)."""
        def deco(fn: Callable[..., Mapping[str, float]]) -> Callable[..., Mapping[str, float]]:
            extra = {k: v for k, v in (("timed", timed), ("planned_steps", planned_steps),
                                       ("budget", budget)) if v}
            self.add(experiment, TrainEntry(experiment, fn, tuple(models), default_model,
                                            dict(instant or {}), model_knob=model_knob, **extra))
            return fn
        return deco


#: Each experiment's main training, for ``bloodlib train EXPERIMENT``.
TRAINERS = _Trainers("experiment trainer")
