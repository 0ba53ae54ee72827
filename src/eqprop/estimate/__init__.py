"""Gradient estimators behind one interface, and the SPEC strings that name them.

A SPEC is an estimator name with optional settings: ``"hep:points=6:beta=0.5"``,
``"ep:beta=0.05"``, ``"implicit"``. Settings not given in the SPEC come from the
defaults passed in (the configuration's ``[estimator]`` section), except that ``ep``
and ``contrast`` are one-sided (``points=1``) unless the SPEC or a config whose
estimator is itself ``ep``/``contrast`` says otherwise.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..relax import Dynamics
from .base import Estimate, Estimator, FreePhase, assemble, free_phase, nudged_field
from .contrast import Contrast
from .exact import BPTT, ExactNudge, Implicit, exact_nudge_derivative, rbp_delta, unrolled_loss
from .nudge import EP, HolomorphicEP, OnlineHEP, circle_derivative, circle_points

ESTIMATORS: dict[str, type[Estimator]] = {
    "ep": EP,
    "hep": HolomorphicEP,
    "online-hep": OnlineHEP,
    "exact-nudge": ExactNudge,
    "implicit": Implicit,
    "bptt": BPTT,
    "contrast": Contrast,
}

# settings each estimator takes, with their types
SETTINGS: dict[str, dict[str, type]] = {
    "ep": {"beta": float, "points": int},
    "hep": {"beta": float, "points": int},
    "online-hep": {"beta": float, "points": int, "periods": int},
    "exact-nudge": {},
    "implicit": {},
    "bptt": {},
    "contrast": {"beta": float, "points": int},
}


def make_estimator(name: str, dynamics: Dynamics, **settings: Any) -> Estimator:
    """Build an estimator by name; unknown names or settings raise ``ValueError``."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; allowed: {', '.join(ESTIMATORS)}")
    allowed = SETTINGS[name]
    for key in settings:
        if key not in allowed:
            raise ValueError(
                f"estimator {name!r} has no setting {key!r}; allowed: {', '.join(allowed) or 'none'}"
            )
    return ESTIMATORS[name](dynamics=dynamics, **settings)


def parse_spec(spec: str, dynamics: Dynamics, defaults: Mapping[str, Any] | None = None) -> Estimator:
    """Build an estimator from a SPEC string such as ``"hep:points=6:beta=0.5"``."""
    defaults = dict(defaults or {})
    name, *parts = spec.split(":")
    if name not in ESTIMATORS:
        raise ValueError(f"estimator SPEC {spec!r}: unknown estimator {name!r}; allowed: {', '.join(ESTIMATORS)}")
    allowed = SETTINGS[name]
    given: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or key not in allowed:
            raise ValueError(
                f"estimator SPEC {spec!r}: bad setting {part!r}; {name!r} takes "
                + (", ".join(f"{k}=<{t.__name__}>" for k, t in allowed.items()) or "no settings")
            )
        try:
            given[key] = allowed[key](value)
        except ValueError:
            raise ValueError(f"estimator SPEC {spec!r}: {key} must be {allowed[key].__name__}, got {value!r}") from None
    base_name = defaults.pop("name", None)
    settings = {k: v for k, v in defaults.items() if k in allowed}
    if name in ("ep", "contrast") and base_name != name:
        settings["points"] = 1
    settings.update(given)
    return make_estimator(name, dynamics, **settings)


__all__ = [
    "Estimator", "Estimate", "FreePhase", "free_phase", "assemble", "nudged_field",
    "EP", "HolomorphicEP", "OnlineHEP", "ExactNudge", "Implicit", "BPTT", "Contrast",
    "ESTIMATORS", "SETTINGS", "make_estimator", "parse_spec",
    "circle_points", "circle_derivative", "exact_nudge_derivative", "rbp_delta", "unrolled_loss",
]
