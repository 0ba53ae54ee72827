"""The shared test tables: models x estimators x solvers (as Optax's
``_OPTIMIZERS_UNDER_TEST`` and Diffrax's solver list).

``tests/test_table.py`` runs the same mathematical tests over every row. A new model,
estimator or solver joins every test by one entry here:

- :data:`MODELS_UNDER_TEST`: a tied layered :class:`~eqprop.network.DenseNetwork`, an
  untied graph one (asymmetric, not bipartite), and a model that is *not* a
  DenseNetwork, written in ``tests/plugins/hopfield.py`` the way a user writes a plugin
  and loaded through the public API (:func:`eqprop.load_plugin`, then the registered
  model kind's ``build``), a directed network (Farinha et al. 2020) and a small tied
  convolutional network whose softmax pooling couples a population to itself;
- :data:`ESTIMATORS_UNDER_TEST`: every registered estimator with the settings and the
  tolerance at which it must match its reference gradient;
- :data:`SOLVERS_UNDER_TEST`: the fixed-point solvers: the plain iteration, synchronous
  and alternating (bipartite models), and Anderson acceleration.

The reference of an estimator of ``da*/dbeta`` (EP, hEP, online hEP, contrast, exact
nudge) is the implicit gradient when the model is symmetric, and the exact-nudge
gradient otherwise (the asymmetry bias is the model's, not the estimator's); BPTT's is
the implicit gradient always. Everything is float64 (``tests/conftest.py``), and small:
the table is compiled once per (model, estimator) and cached for the session.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp

import eqprop
from eqprop.build import phase_solvers
from eqprop.estimate import FreePhase, free_phase, make_estimator
from eqprop.network import BipartiteModel, EquilibriumModel, named_parameters
from eqprop.registry import MODELS
from eqprop.solvers import Anderson, FixedPoint, FixedPointSolver, PhaseSolvers

F64 = jnp.float64
PLUGIN = Path(__file__).resolve().parent / "plugins" / "hopfield.py"

#: the phases of the references: relaxed to 1e-12, linear solves to 1e-13
EXACT = phase_solvers(free_steps=400, nudged_steps=400, tol=1e-12, linear_steps=4000,
                      linear_tol=1e-13, linear_solver="fixed-point")


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def _plugin_model(*, key: jax.Array, input_size: int, n_classes: int, **settings: Any):
    eqprop.load_plugin(PLUGIN)  # the public API a user's --plugin goes through
    kind = MODELS.get("test-hopfield")(dtype="float64", **settings)
    return kind.build(input_size=input_size, n_classes=n_classes, key=key)


@dataclass(frozen=True)
class ModelCase:
    """A model under test: ``make(key)`` builds it for ``n_in`` inputs and ``n_classes``."""

    id: str
    make: Callable[[jax.Array], EquilibriumModel]
    n_in: int = 6
    n_classes: int = 3

    def __str__(self) -> str:
        return self.id


MODELS_UNDER_TEST = (
    ModelCase("layered-tied", lambda key: eqprop.layered([6, 8, 8, 3], key=key, dtype=F64)),
    ModelCase("graph-untied", lambda key: eqprop.graph(
        {"h1": 8, "out": 5}, [["input", "h1"], ["h1", "out"], ["out", "h1"], ["input", "out"]],
        input_size=6, n_classes=3, key=key, feedback="untied", asymmetry_angle=45.0, dtype=F64)),
    ModelCase("plugin-hopfield", lambda key: _plugin_model(key=key, input_size=6, n_classes=3,
                                                           hidden=8)),
    ModelCase("directed-rate", lambda key: eqprop.network.directed(6, 5, 3, key=key, dtype=F64,
                                                                    readout="softmax")),
    # a conv net (NHWC feature maps, softmax pooling inside the tied feedback): 4x4x1 images
    # (flattened, as the table's batches are) -> c1 2 ch pooled to 2x2 -> c2 3 ch -> out 4
    ModelCase("conv-pooled", lambda key: eqprop.network.convnet(
        (4, 4, 1), (2, 3), n_classes=3, key=key, pool=(True, False), output_size=4, dtype=F64,
        init_scale=1.5), n_in=16),
)
MODEL_IDS = {m.id: m for m in MODELS_UNDER_TEST}


@dataclass(frozen=True)
class Setup:
    """A model, a batch ``(x, y)`` and its free phase relaxed with :data:`EXACT`."""

    model: EquilibriumModel
    x: jax.Array
    y: jax.Array
    free: FreePhase


@functools.cache
def setup(model_id: str) -> Setup:
    case = MODEL_IDS[model_id]
    model = case.make(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, case.n_in), F64)
    y = jnp.arange(4) % case.n_classes
    return Setup(model, x, y, relax_free(model, x, EXACT))


# ---------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EstimatorCase:
    """An estimator under test and how close it must come to its reference.

    ``cos_min``: least cosine with the reference (all parameters flattened);
    ``rel_max``: largest relative error ``|g - ref| / |ref|`` of every parameter leaf.
    ``of_nudge``: an estimate of ``da*/dbeta`` (reference: exact nudge when the model is
    not symmetric). ``energy``: needs a symmetric :class:`~eqprop.network.EnergyModel`.
    """

    id: str
    name: str
    settings: tuple[tuple[str, Any], ...] = ()
    cos_min: float = 0.9999
    rel_max: float = 1e-2
    of_nudge: bool = True
    energy: bool = False

    def __str__(self) -> str:
        return self.id

    def make(self, solvers: PhaseSolvers = EXACT):
        return make_estimator(self.name, solvers, **dict(self.settings))

    def reference(self, model: EquilibriumModel) -> str:
        """The estimator whose gradient this one must match on ``model``."""
        return "exact-nudge" if self.of_nudge and not model.symmetric else "implicit"


#: built-in estimators that are not estimates of a gradient, so have no row: the reason
NOT_GRADIENTS = {
    "deep-rule": "the DEEP rule (Farinha et al. 2020) is a local rule, not the gradient; "
                 "tests/test_directed.py checks it against the authors' rule",
    "bp": "the backpropagation baseline differentiates the feed-forward counterpart of the network, "
          "not the recurrent network at its fixed point; tests/test_bp.py checks it against a "
          "hand-written MLP",
}

ESTIMATORS_UNDER_TEST = (
    EstimatorCase("ep-symmetric", "ep", (("beta", 0.01), ("points", 2)), 0.999999, 1e-3),
    EstimatorCase("hep-6", "hep", (("beta", 0.5), ("points", 6)), 0.9999, 5e-2),
    EstimatorCase("online-hep", "online-hep", (("beta", 0.5), ("points", 4), ("periods", 4)),
                  0.999, 0.1),
    EstimatorCase("contrast", "contrast", (("beta", 0.01), ("points", 2)), 0.999999, 1e-3,
                  energy=True),
    EstimatorCase("exact-nudge", "exact-nudge", (), 0.99999, 1e-6),
    EstimatorCase("bptt", "bptt", (), 0.99999, 1e-6, of_nudge=False),
)
ESTIMATOR_IDS = {e.id: e for e in ESTIMATORS_UNDER_TEST}
#: the reference itself (checked against finite differences in tests/test_estimators.py)
REFERENCE = "implicit"
#: the loosest tolerance of the table: a wrong gradient must fail even this one
LOOSEST = dict(cos_min=min(e.cos_min for e in ESTIMATORS_UNDER_TEST),
               rel_max=max(e.rel_max for e in ESTIMATORS_UNDER_TEST))


@eqx.filter_jit
def estimate(estimator, model, x, y, free):
    """``estimator``'s gradient (jitted once per estimator and model structure)."""
    return estimator(model, x, y, free, jax.random.PRNGKey(0))[0]


#: :func:`~eqprop.estimate.free_phase`, jitted once per solver and model structure
relax_free = eqx.filter_jit(free_phase)


@functools.cache
def gradient(model_id: str, name: str, settings: tuple[tuple[str, Any], ...] = ()) -> Any:
    """The gradient of the registered estimator ``name`` on :func:`setup` ``(model_id)``
    (jitted, cached for the session)."""
    s = setup(model_id)
    return estimate(make_estimator(name, EXACT, **dict(settings)), s.model, s.x, s.y, s.free)


def reference_gradient(model_id: str, case: EstimatorCase) -> Any:
    return gradient(model_id, case.reference(setup(model_id).model))


def leaves(g: Any) -> dict[str, jax.Array]:
    """``{name: array}`` of a model-shaped gradient's trainable leaves."""
    return named_parameters(g)


def assert_gradient_close(g: Any, ref: Any, *, cos_min: float, rel_max: float) -> None:
    """``g`` matches ``ref``: same leaves and shapes, cosine of the flattened gradients
    ``>= cos_min``, and every leaf's relative error ``<= rel_max``.

    A sign flip (cosine -1), a factor of 2 (relative error 1) or a transposed leaf (its
    own relative error of order 1) fails it at any tolerance of the table.
    """
    g, ref = leaves(g), leaves(ref)
    assert g.keys() == ref.keys(), f"different parameters: {sorted(g)} vs {sorted(ref)}"
    for k in ref:
        assert g[k].shape == ref[k].shape, f"{k}: shape {g[k].shape} vs {ref[k].shape}"
    a = jnp.concatenate([jnp.ravel(v) for v in g.values()])
    b = jnp.concatenate([jnp.ravel(v) for v in ref.values()])
    cos = float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
    assert cos >= cos_min, f"cosine {cos:.8f} < {cos_min}"
    scale = float(jnp.linalg.norm(b))
    for k in ref:
        # a leaf whose reference is ~0 is measured against the whole gradient's norm
        denom = max(float(jnp.linalg.norm(ref[k])), 1e-6 * scale)
        rel = float(jnp.linalg.norm(g[k] - ref[k])) / denom
        assert rel <= rel_max, f"{k}: relative error {rel:.3e} > {rel_max}"


# ---------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SolverCase:
    """A fixed-point solver under test (its settings reach 1e-12 on every model)."""

    id: str
    solver: FixedPointSolver

    def __str__(self) -> str:
        return self.id

    def applies(self, model: EquilibriumModel) -> bool:
        """Whether the solver can relax ``model`` (alternating: a bipartite model)."""
        return self.solver.update == "synchronous" or (
            isinstance(model, BipartiteModel) and model.partition() is not None)

    def phases(self) -> PhaseSolvers:
        """This solver for the free phase; the nudged phases as the trainer relaxes them
        (the plain iteration, with this solver's ``update``); exact linear solves."""
        nudged = dataclasses.replace(EXACT.nudged, update=self.solver.update)
        return dataclasses.replace(EXACT, free=self.solver, nudged=nudged)


SOLVERS_UNDER_TEST = (
    SolverCase("fixed-point", FixedPoint(steps=400, tol=1e-12)),
    SolverCase("fixed-point-alternating", FixedPoint(steps=400, tol=1e-12, update="alternating")),
    SolverCase("anderson", Anderson(steps=400, tol=1e-12, memory=5)),
)


# ---------------------------------------------------------------------------
# A projected model: any model of the table, its states clipped into a box
# ---------------------------------------------------------------------------

BOX = 0.25
_BOXED: dict[type, type] = {}


def _clip(self, u):
    return jax.tree.map(lambda v: jnp.clip(v, -BOX, BOX), u)


def boxed(model: EquilibriumModel) -> EquilibriumModel:
    """``model`` as an instance of a subclass whose ``project`` clips every state into
    ``[-BOX, BOX]`` (same fields, same capabilities)."""
    cls = type(model)
    sub = _BOXED.get(cls)
    if sub is None:
        sub = _BOXED[cls] = type(f"Boxed{cls.__name__}", (cls,),
                                 {"project": _clip, "__module__": __name__})
    return sub(**{f.name: getattr(model, f.name) for f in dataclasses.fields(model)})


__all__ = ["EXACT", "F64", "MODELS_UNDER_TEST", "ESTIMATORS_UNDER_TEST", "SOLVERS_UNDER_TEST",
           "REFERENCE", "LOOSEST", "ModelCase", "EstimatorCase", "SolverCase", "Setup", "setup",
           "gradient", "estimate", "relax_free", "reference_gradient", "assert_gradient_close", "leaves", "boxed", "BOX"]
