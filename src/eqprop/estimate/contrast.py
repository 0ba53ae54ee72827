"""Classic EP for tied (energy-based) networks: the local contrast form.

With the primitive ``Phi(a)`` (``dPhi/da = h(a)``), classic EP estimates the gradient
by contrasting the local products ``dPhi/dtheta`` (for a projection: presynaptic times
postsynaptic activity) at two fixed points:

    one-sided:  (dPhi/dtheta(a_b) - dPhi/dtheta(a_0)) / b,   b = +beta or -beta
    symmetric:  (dPhi/dtheta(a_beta) - dPhi/dtheta(a_-beta)) / (2 beta)

Since ``d/dbeta dPhi/dtheta(a(beta)) = (dh/dtheta)^T da/dbeta``, this equals the
generalized form to first order in beta (to second order for the symmetric one).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..network.base import EnergyModel
from ..registry import ESTIMATORS
from ..settings import POSITIVE, POSITIVE_INT, SettingError, setting
from ..solvers import FixedPoint, FixedPointSolver
from .base import Estimate, Estimator, add_grads, readout_grad
from .nudge import SIGN_DOC, SIGNS, check_sign, circle_decay, circle_derivative, signed_beta


@ESTIMATORS.register("contrast")
class Contrast(Estimator):
    """Classic EP contrast of local products at the free and nudged fixed points (tied only;
    Scellier and Bengio 2017, Eq. 10; symmetric form: Laborieux et al. 2021).

    The gradient is the contrast of ``dPhi/dtheta`` of the module doc divided by the
    batch size ``B``, plus the readout's direct gradient at the free fixed point.

    **Settings:** ``beta``: nudging strength (``> 0``); ``points``: 1 (one-sided, nudged
    phase at ``b`` against the free phase) or 2 (symmetric, ``+beta`` against
    ``-beta``); ``sign`` (one-sided only): ``b = +beta`` (``"positive"``, the output pushed
    away from the target), ``-beta`` (``"negative"``, toward it: Scellier and Bengio's
    nudge) or a random sign per batch from the step's key (``"random"``), as
    :class:`~eqprop.estimate.EP` (:func:`~eqprop.estimate.nudge.signed_beta`);
    ``nudged``: the nudged phases' solver.

    Its :class:`~eqprop.estimate.Estimate` carries the finite-difference error vector of
    :class:`~eqprop.estimate.EP` with the same settings, the nudged phases' stats and,
    symmetric, the circle check of :func:`~eqprop.estimate.nudge.circle_decay`.

    **Raises:** :class:`~eqprop.settings.SettingError` for ``points`` not 1 or 2, or a
    ``sign`` other than ``"positive"`` with ``points = 2``;
    :meth:`check` raises ``ValueError`` for a model that is not a symmetric (tied)
    :class:`~eqprop.network.EnergyModel`.
    """

    beta: float = setting(0.5, "Nudging strength.", bounds=POSITIVE)
    points: int = setting(2, "1 (one-sided) or 2 (symmetric).", bounds=POSITIVE_INT)
    sign: str = setting("positive", SIGN_DOC, choices=SIGNS)
    nudged: FixedPointSolver = eqx.field(static=True, default=FixedPoint(steps=20))

    def __check_init__(self):
        if self.points not in (1, 2):
            raise SettingError("points", f"'contrast' takes 1 (one-sided) or 2 (symmetric), got {self.points}")
        check_sign("contrast", self.points, self.sign)

    def check(self, model):
        """As :meth:`Estimator.check`, and ``ValueError`` unless ``model`` is an
        :class:`~eqprop.network.EnergyModel` with ``symmetric`` true (tied weights)."""
        super().check(model)
        if not isinstance(model, EnergyModel) or not model.symmetric:
            what = ("not an EnergyModel" if not isinstance(model, EnergyModel) else
                    "an EnergyModel whose symmetric is False (untied feedback)")
            raise ValueError(f"estimator 'contrast' needs a tied (symmetric) network, an EnergyModel "
                             f"with symmetric = True; {type(model).__name__} is {what}; use 'ep' or 'hep'")

    def __call__(self, model, x, y, free, key):
        beta = signed_beta(self.beta, self.sign, key) if self.points == 1 else self.beta
        v, stats, states = circle_derivative(model, free, y, beta, self.points, self.nudged)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        local = jax.grad(lambda p, a: jnp.sum(eqx.combine(p, static).primitive(a, x)))
        betas, a = states["real"]
        a0 = model.activity(free.u)
        if self.points == 1:
            lo, hi, width = a0, jax.tree.map(lambda t: t[0], a), beta
        else:
            lo, hi, width = jax.tree.map(lambda t: t[1], a), jax.tree.map(lambda t: t[0], a), 2 * self.beta
        scale = 1.0 / (width * x.shape[0])
        g_hi, g_lo = local(params, hi), local(params, lo)
        g = jax.tree.map(lambda s, t: (s - t) * scale, g_hi, g_lo)
        decay = circle_decay(model, free, states, self.beta, self.points)
        return add_grads(g, readout_grad(model, a0, y)), Estimate(error_vector=v, phases=stats,
                                                                   circle=decay)
