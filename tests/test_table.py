"""The math of eqprop over the shared table (tests/table.py): every model x estimator x
solver, including a model that is not a DenseNetwork, written as a user's plugin.

- every estimator matches its reference gradient (the implicit one when the model is
  symmetric: hEP N = 6 cosine > 0.9999, exact nudge > 0.99999), at a tolerance that a
  sign flip, a factor of 2 or a transposed leaf fails;
- the sign convention: every estimate points along +dL/dtheta (a small step against it
  lowers the loss);
- the same fixed point and gradient whichever solver relaxed the free and nudged phases;
- every solver honours a model's ``project`` (its states stay in the box).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqprop.estimate import free_phase
from eqprop.estimate.nudge import nudged_phases
from eqprop.network import DenseNetwork, EnergyModel, InteractionModel
from eqprop.registry import ESTIMATORS, MODELS, SOLVERS
from table import (NOT_GRADIENTS, BOX, ESTIMATORS_UNDER_TEST, EXACT, LOOSEST, MODELS_UNDER_TEST, REFERENCE,
                   SOLVERS_UNDER_TEST, assert_gradient_close, boxed, estimate, gradient, leaves,
                   reference_gradient, relax_free, setup)

MODEL_PARAMS = [pytest.param(m.id, id=m.id) for m in MODELS_UNDER_TEST]
ESTIMATOR_PARAMS = [pytest.param(e, id=e.id) for e in ESTIMATORS_UNDER_TEST]
SOLVER_PARAMS = [pytest.param(s, id=s.id) for s in SOLVERS_UNDER_TEST]


def _flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(tree)])


def _max_abs(tree) -> float:
    return max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(tree))


# -- the table itself ------------------------------------------------------------------


def test_the_table_covers_every_builtin_estimator_and_solver():
    """A built-in estimator or solver registered without a row here fails this test."""
    builtin = lambda reg: {n for n, c in reg.items() if c.__module__.startswith("eqprop.")}  # noqa: E731
    assert builtin(ESTIMATORS) <= {e.name for e in ESTIMATORS_UNDER_TEST} | {REFERENCE} | set(NOT_GRADIENTS)
    assert builtin(SOLVERS) <= {SOLVERS.name_of(s.solver) for s in SOLVERS_UNDER_TEST}


def test_the_plugin_model_is_a_users_model_registered_through_the_public_api():
    m = setup("plugin-hopfield").model
    assert not isinstance(m, DenseNetwork)
    assert isinstance(m, InteractionModel) and isinstance(m, EnergyModel) and m.symmetric
    assert type(m).__module__.startswith("eqprop_plugins.")  # loaded by eqprop.load_plugin
    assert "test-hopfield" in MODELS


@pytest.mark.parametrize("model", MODEL_PARAMS)
def test_free_phase_reaches_the_fixed_point(model):
    s = setup(model)
    assert float(jnp.max(s.free.stats.residual)) < 1e-10
    assert int(s.free.stats.nonfinite_step) == -1


@pytest.mark.parametrize("model", MODEL_PARAMS)
def test_the_interaction_is_the_gradient_of_the_primitive_at_any_parameters(model):
    """``h(a) = dPhi/da`` for every energy-based model, with every parameter leaf moved
    away from its initialisation (biases start at zero, where a bias counted twice in
    ``h`` would not show; it did in the conv net's output population)."""
    s = setup(model)
    m = s.model
    if not (isinstance(m, EnergyModel) and m.symmetric and isinstance(m, InteractionModel)):
        pytest.skip("no primitive: not an energy-based interaction model")
    params, static = eqx.partition(m, eqx.is_inexact_array)
    leaves_, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves_))
    moved = [v + 0.3 * jax.random.normal(k, v.shape, v.dtype) for v, k in zip(leaves_, keys)]
    m = eqx.combine(jax.tree.unflatten(treedef, moved), static)
    a = m.activity(jax.tree.map(lambda v: v + 0.5, s.free.u))
    h = m.interaction(a, m.prepare(s.x))
    g = jax.grad(lambda v: jnp.sum(m.primitive(v, s.x)))(a)
    assert jax.tree.structure(h) == jax.tree.structure(g)
    for hv, gv in zip(jax.tree.leaves(h), jax.tree.leaves(g)):
        np.testing.assert_allclose(hv, gv, rtol=1e-10, atol=1e-12)


# -- every estimator against its reference ---------------------------------------------


def _refuses(case, model) -> bool:
    return case.energy and not (isinstance(model, EnergyModel) and model.symmetric)


@pytest.mark.parametrize("est", ESTIMATOR_PARAMS)
@pytest.mark.parametrize("model", MODEL_PARAMS)
def test_estimator_matches_its_reference(model, est):
    s = setup(model)
    estimator = est.make()
    if _refuses(est, s.model):
        with pytest.raises(ValueError, match="symmetric"):
            estimator.check(s.model)
        return
    estimator.check(s.model)
    g = gradient(model, est.name, est.settings)
    if est.name == est.reference(s.model):
        # the exact nudge is the reference of an asymmetric model's nudge estimators; it
        # really differs from the implicit gradient there (the table tests something)
        assert not s.model.symmetric
        with pytest.raises(AssertionError):
            assert_gradient_close(g, gradient(model, REFERENCE), **LOOSEST)
        return
    assert_gradient_close(g, reference_gradient(model, est), cos_min=est.cos_min,
                          rel_max=est.rel_max)


def _transpose_one(g):
    name = "h1->h2"
    return eqx.tree_at(lambda t: t.weights[name], g, g.weights[name].T)


def _double_one(g):
    return eqx.tree_at(lambda t: t.biases["h1"], g, 2 * g.biases["h1"])


WRONG = {
    "sign-flip": lambda g: jax.tree.map(jnp.negative, g),
    "factor-2": lambda g: jax.tree.map(lambda t: 2 * t, g),
    "one-leaf-transposed": _transpose_one,
    "one-leaf-doubled": _double_one,
}


@pytest.mark.parametrize("wrong", list(WRONG))
def test_a_wrong_gradient_fails_the_loosest_tolerance(wrong):
    """The assertion the table uses catches a sign flip, a factor of 2 and a transpose,
    even at the loosest tolerance of any estimator."""
    ref = gradient("layered-tied", REFERENCE)
    w = ref.weights["h1->h2"]
    assert w.shape[0] == w.shape[1] and float(jnp.linalg.norm(w - w.T)) > 0.1 * float(jnp.linalg.norm(w))
    assert_gradient_close(ref, ref, **LOOSEST)
    with pytest.raises(AssertionError):
        assert_gradient_close(WRONG[wrong](ref), ref, **LOOSEST)


# -- the sign convention ---------------------------------------------------------------


def _loss(model, x, y):
    f = free_phase(model, x, EXACT)
    return jnp.mean(model.loss(model.activity(f.u), y))


_loss_jit = eqx.filter_jit(_loss)  # compiled once per model structure


@pytest.mark.parametrize("est", ESTIMATOR_PARAMS)
@pytest.mark.parametrize("model", MODEL_PARAMS)
def test_a_step_against_the_estimate_lowers_the_loss(model, est):
    """The estimate points along +dL/dtheta: plain gradient descent on it lowers the loss."""
    s = setup(model)
    if _refuses(est, s.model):  # refused, as test_estimator_matches_its_reference checks
        with pytest.raises(ValueError, match="symmetric"):
            est.make().check(s.model)
        return
    g = gradient(model, est.name, est.settings)
    eps = 1e-3 / float(jnp.linalg.norm(_flat(leaves(g))))
    step = lambda sign: eqx.apply_updates(s.model, jax.tree.map(lambda t: sign * eps * t, g))  # noqa: E731
    base = float(_loss_jit(s.model, s.x, s.y))
    assert float(_loss_jit(step(-1.0), s.x, s.y)) < base < float(_loss_jit(step(+1.0), s.x, s.y))


# -- whichever solver ------------------------------------------------------------------

EP_SYMMETRIC = next(e for e in ESTIMATORS_UNDER_TEST if e.id == "ep-symmetric")


@pytest.mark.parametrize("solver", SOLVER_PARAMS)
@pytest.mark.parametrize("model", MODEL_PARAMS)
def test_same_fixed_point_and_gradient_whichever_solver(model, solver):
    """The free phase relaxed by each solver is the reference fixed point and gives the
    same EP gradient; a solver that cannot relax a model says why."""
    s = setup(model)
    if not solver.applies(s.model):
        with pytest.raises(ValueError, match="bipartite"):
            free_phase(s.model, s.x, solver.solver)
        return
    phases = solver.phases()
    free = relax_free(s.model, s.x, phases)
    assert float(jnp.max(free.stats.residual)) < 1e-10
    u, u_ref = _flat(free.u), _flat(s.free.u)
    assert float(jnp.linalg.norm(u - u_ref) / jnp.linalg.norm(u_ref)) < 1e-9
    g = estimate(EP_SYMMETRIC.make(phases), s.model, s.x, s.y, free)
    assert_gradient_close(g, gradient(model, EP_SYMMETRIC.name, EP_SYMMETRIC.settings),
                          cos_min=1 - 1e-10, rel_max=1e-6)


@pytest.mark.parametrize("solver", SOLVER_PARAMS)
def test_every_solver_honours_the_projection(solver):
    """A model subclass whose ``project`` clips states into [-BOX, BOX]: the free phase
    relaxed by every solver, and the nudged phases relaxed as the trainer relaxes them
    with it, end in the box, where the unprojected ones do not."""
    s = setup("layered-tied")  # bipartite: every solver of the table applies
    assert _max_abs(s.free.u) > BOX  # the box binds: the test is not vacuous
    m = boxed(s.model)
    assert type(m).__mro__[1] is type(s.model) and m.projector() is not None
    phases = solver.phases()
    free = relax_free(m, s.x, phases)
    nudged, _ = _nudged_jit(m, free, s.y, jnp.asarray([0.5, -0.5], s.x.dtype), phases.nudged)
    assert _max_abs(free.u) <= BOX and _max_abs(nudged) <= BOX
    assert jnp.all(jnp.isfinite(_flat(free.u)))


_nudged_jit = eqx.filter_jit(nudged_phases)


# -- numerics: every product at the operands' own precision ------------------------------

#: estimators whose linear solve (lineax) makes products of its own: those follow the
#: process default that eqprop.build.configure_numerics sets (tests/test_precision.py)
LINEAR_SOLVE = {"exact-nudge", "implicit"}
#: a model whose products are its author's (a plugin's plain ``@``): the process default too
USERS_OWN = {"plugin-hopfield"}


def _products(jaxpr):
    """Every ``dot_general`` and ``conv_general_dilated`` of ``jaxpr`` and of the jaxprs
    nested in its equations (loops, branches, custom derivatives), with real operands of
    at least 32 bits (a mixed-precision product's bfloat16 operands have no other)."""
    for eqn in jaxpr.eqns:
        if (eqn.primitive.name in ("dot_general", "conv_general_dilated")
                and all(v.aval.dtype in (jnp.float32, jnp.float64) for v in eqn.invars)):
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _products(inner)


def _below_highest(model, est) -> list[str]:
    """The products of relaxing ``model`` and estimating with ``est`` that run below the
    operands' precision when the process default is a GPU's TensorFloat-32."""
    s = setup(model)

    def run(m, x, y):
        return est.make()(m, x, y, free_phase(m, x, EXACT.free), jax.random.PRNGKey(0))[0]

    with jax.default_matmul_precision("tensorfloat32"):
        jaxpr = jax.make_jaxpr(run)(s.model, s.x, s.y).jaxpr
    found = list(_products(jaxpr))
    assert found, "nothing to check: the walk found no product"
    highest = (jax.lax.Precision.HIGHEST,) * 2
    return [str(e.primitive) for e in found if e.params.get("precision") != highest]


@pytest.mark.parametrize("est", [e for e in ESTIMATOR_PARAMS if e.values[0].name not in LINEAR_SOLVE])
@pytest.mark.parametrize("model", [m for m in MODEL_PARAMS if m.values[0] not in USERS_OWN])
def test_every_product_of_a_builtin_network_is_at_its_operands_precision(model, est):
    """A GPU rounds float32 operands to TensorFloat-32 under JAX's default precision (an
    EP estimate divides that rounding by beta): the networks' products, their VJPs and
    the estimators' own set HIGHEST, whatever the process default."""
    if _refuses(est, setup(model).model):
        return
    assert _below_highest(model, est) == []


def test_the_precision_check_finds_a_product_left_at_the_default():
    """The check above can fail: the plugin's plain ``@`` follows the process default."""
    assert _below_highest("plugin-hopfield", ESTIMATORS_UNDER_TEST[1])


@pytest.mark.parametrize("model", MODEL_PARAMS)
def test_every_model_keeps_the_shapes_of_its_contract(model):
    """What build_model traces before a run (eqprop.network.contract.check_shapes) holds
    for every model of the table, the plugin and the conv net included."""
    from table import MODEL_IDS

    from eqprop.network.contract import check_shapes

    case = MODEL_IDS[model]
    check_shapes(setup(model).model, (case.n_in,), case.n_classes, jnp.float64)
