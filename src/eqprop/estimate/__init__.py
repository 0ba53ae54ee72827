"""Gradient estimators behind one interface, and the SPEC strings that name them.

A SPEC is an estimator name with optional settings: ``"hep:points=6:beta=0.5"``,
``"ep:beta=0.05"``, ``"implicit"``, ``"bp"`` (the backpropagation baseline of the
feed-forward counterpart, :mod:`eqprop.estimate.bp`). Settings not given in the SPEC come from the
defaults passed in (the configuration's ``[estimator]`` section), except that ``ep``
and ``contrast`` are one-sided (``points=1``) unless the SPEC or a config whose
estimator is itself ``ep``/``contrast`` says otherwise.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..registry import ESTIMATORS
from ..settings import settings_of
from ..solvers import PhaseSolvers
from .base import Estimate, Estimator, FreePhase, assemble, estimate_metrics, free_phase, nudged_field
from .nudge import EP, CircleDecay, HolomorphicEP, OnlineHEP, circle_decay, circle_derivative, circle_points  # isort: skip
from .exact import BPTT, ExactNudge, Implicit, exact_nudge_derivative, rbp_delta, unrolled_loss  # isort: skip
from .contrast import Contrast  # isort: skip  (registration order: nudge, exact, contrast)
from .deep import DeepRule  # isort: skip  (then the DEEP rule of directed networks)
from .bp import BackProp, feedforward_loss, forward_phase  # isort: skip  (the BP baseline)

def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(text)


_boolean.__name__ = "bool"
_TYPES = {"integer": int, "float": float, "string": str, "boolean": _boolean}


def settings_types(name: str) -> dict[str, type]:
    """``{setting: type}`` of the registered estimator ``name`` (its ``setting()`` fields;
    ``int``, ``float``, ``str`` or ``bool``). **Raises:** ``ValueError`` for an unknown
    name."""
    return {f.name: _TYPES.get(f.kind, str) for f in settings_of(ESTIMATORS.get(name))}


def make_estimator(name: str, solvers: PhaseSolvers | None = None, **settings: Any) -> Estimator:
    """Build the registered estimator ``name`` with ``settings``, its solver fields taken
    from ``solvers``.

    **Arguments:** ``name``: a name of :data:`~eqprop.registry.ESTIMATORS`; ``solvers``:
    the phases' solvers, of which the estimator receives those it has fields for
    (:meth:`~eqprop.solvers.PhaseSolvers.wiring`; default:
    :class:`~eqprop.solvers.PhaseSolvers`'s defaults); ``**settings``: its
    ``setting()`` fields (e.g. ``beta=0.5, points=4``), unspecified ones at the class
    defaults.

    **Returns:** the :class:`Estimator`.

    **Raises:** ``ValueError`` for an unknown name or setting (one line, naming the
    allowed ones) or an invalid value (:class:`~eqprop.settings.SettingError`).
    """
    cls = ESTIMATORS.get(name)
    allowed = settings_types(name)
    for key in settings:
        if key not in allowed:
            raise ValueError(
                f"estimator {name!r} has no setting {key!r}; allowed: {', '.join(allowed) or 'none'}"
            )
    solvers = PhaseSolvers() if solvers is None else solvers
    return cls(**settings, **solvers.wiring(cls))


def parse_spec(spec: str, solvers: PhaseSolvers | None = None,
               defaults: Mapping[str, Any] | None = None, *,
               offer: Sequence[str] | None = None) -> Estimator:
    """Build an estimator from a SPEC string such as ``"hep:points=6:beta=0.5"``.

    Settings not in the SPEC come from ``defaults`` (the configuration's
    ``[estimator]`` section, ``name`` included), except that ``ep`` and ``contrast``
    are one-sided (``points=1``) unless the SPEC, or a ``defaults`` whose own name is the
    same estimator, says otherwise. ``defaults`` keys the estimator does not take are
    ignored.

    **Arguments:** ``spec``: ``"<name>[:<setting>=<value>]..."``; ``solvers``: as
    :func:`make_estimator`; ``defaults``: ``{"name": ..., setting: value, ...}``;
    ``offer``: the names an unknown-estimator error lists (default: every registered one).

    **Returns:** the :class:`Estimator`.

    **Raises:** ``ValueError`` (one line quoting the SPEC) for an unknown estimator, a
    part without ``=``, an unknown setting, a setting given twice, a value of the wrong
    type, or an invalid value.
    """
    defaults = dict(defaults or {})
    name, *parts = spec.split(":")
    if name not in ESTIMATORS:
        raise ValueError(f"estimator SPEC {spec!r}: unknown estimator {name!r}; allowed: "
                         f"{', '.join(ESTIMATORS if offer is None else offer)}")
    allowed = settings_types(name)
    given: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or key not in allowed:
            raise ValueError(
                f"estimator SPEC {spec!r}: bad setting {part!r}; {name!r} takes "
                + (", ".join(f"{k}=<{t.__name__}>" for k, t in allowed.items()) or "no settings")
            )
        if key in given:  # the last would win without a word
            raise ValueError(f"estimator SPEC {spec!r}: {key} is given twice")
        try:
            given[key] = allowed[key](value)
        except ValueError:
            raise ValueError(f"estimator SPEC {spec!r}: {key} must be {allowed[key].__name__}, got {value!r}") from None
    base_name = defaults.pop("name", None)
    settings = {k: v for k, v in defaults.items() if k in allowed}
    if name in ("ep", "contrast") and base_name != name:
        settings["points"] = 1
    settings.update(given)
    return make_estimator(name, solvers, **settings)


__all__ = [
    "Estimator", "Estimate", "FreePhase", "free_phase", "assemble", "nudged_field", "estimate_metrics",
    "CircleDecay", "circle_decay",
    "EP", "HolomorphicEP", "OnlineHEP", "ExactNudge", "Implicit", "BPTT", "Contrast", "DeepRule", "BackProp", "feedforward_loss", "forward_phase",
    "ESTIMATORS", "make_estimator", "parse_spec", "settings_types",
    "circle_points", "circle_derivative", "exact_nudge_derivative", "rbp_delta", "unrolled_loss",
]
