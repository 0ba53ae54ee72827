"""Evaluation: free-phase metrics of a (stacked) model over a data split, and optionally
the figures of the estimate the run would make on it (``eqprop eval``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..data import batches
from ..estimate import Estimator, estimate_metrics
from ..guards import NONCONVERGED_TOL
from .placement import place, place_batch

if TYPE_CHECKING:
    from .program import Program

__all__ = ["EVAL_KEYS", "make_eval", "make_estimate_eval", "evaluate"]

PyTree = Any

#: the metrics of an evaluation, each example-weighted over the split
EVAL_KEYS = ("loss", "acc", "top5", "free_steps", "residual", "nonconverged")


def make_eval(relax: Callable[[PyTree, jax.Array], Any]) -> Callable[..., dict[str, jax.Array]]:
    """``f(model, x, y) -> metrics`` of one network (not jitted, not vmapped).

    **Arguments:** ``relax(model, x)``: the free phase (a
    :class:`~eqprop.estimate.base.FreePhase`), built by the program from its solver.

    **Returns:** ``f``, with ``x`` ``(B, ...)``, ``y`` ``(B,)`` int and ``weight``
    ``(B,)`` (1 for an example, 0 for padding), returning the :data:`EVAL_KEYS` as
    ``()`` arrays: the weighted means of the loss, top-1 and top-5 accuracy at the free
    fixed point, residual and unconverged fraction, and the relaxation's steps.
    """

    def f(model, x, y, weight):
        free = relax(model, x)
        a = model.activity(free.u)
        logits = model.readout.logits(model.output_activity(a)).real
        top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        per_example = {
            "loss": model.loss(a, y).real,
            "acc": model.predict(a) == y,
            "top5": jnp.any(top == y[:, None], axis=-1),
            "residual": free.stats.residual,
            "nonconverged": ~(free.stats.residual <= NONCONVERGED_TOL),
        }
        total = jnp.sum(weight)
        m = {k: jnp.sum(weight * v) / total for k, v in per_example.items()}
        m["free_steps"] = free.stats.steps
        return {k: m[k] for k in EVAL_KEYS}

    return f


def make_estimate_eval(relax: Callable[[PyTree, jax.Array], Any], estimator: Estimator
                       ) -> Callable[..., dict[str, jax.Array]]:
    """``f(model, x, y) -> figures`` of the estimate ``estimator`` would make on a batch
    (the gradient is dropped; not jitted, not vmapped).

    **Arguments:** ``relax(model, x)``: the free phase; ``estimator``: the run's
    estimator, called with ``PRNGKey(0)``.

    **Returns:** ``f``, returning :func:`~eqprop.estimate.estimate_metrics` (``()``
    arrays; ``{}`` for an estimator without phases, e.g. BPTT).
    """

    def f(model, x, y):
        _, info = estimator(model, x, y, relax(model, x), jax.random.PRNGKey(0))
        return estimate_metrics(info)

    return f


def evaluate(program: "Program", model: PyTree, x: np.ndarray, y: np.ndarray,
             batch_size: int | None = None, *, estimate: bool = False) -> dict[str, np.ndarray]:
    """Metrics of ``model`` on ``(x, y)``, in order, in batches.

    **Arguments:** ``program``: from :func:`~eqprop.train.build_program`; ``model``:
    one network, or ``K`` stacked when ``program.seeds = K > 1``; ``x`` ``(N, ...)``,
    ``y`` ``(N,)``; ``batch_size``: default ``[data] batch_size``; ``estimate``: also
    run the run's estimator on every batch (its nudged phases or linear solve; the
    free phase is relaxed again) and report its figures.

    **Returns:** ``{key: (K,) float64}`` for the :data:`EVAL_KEYS` (``K = 1`` for one
    network), example-weighted means over the ``N`` examples; with ``estimate`` also
    the keys of :func:`~eqprop.estimate.estimate_metrics` that apply (``nudged_residual``,
    ``nudged_nonconverged``, ``linear_residual``, ``hep_decay``, ``hep_decay_median``, ``hep_error``,
    ``hep_beta_suggested``, ``hep_floor``), weighted the same way.

    Batches hold ``batch_size`` examples rounded up to a multiple of the data axis'
    devices; the last, ragged one is padded by repeating its examples and the padding
    is masked out of the :data:`EVAL_KEYS` (one compiled shape, and no example dropped).
    The estimate's figures are batch means in which the repeated examples count twice.
    """
    bs = batch_size or program.config.data.batch_size
    layout = program.layout
    bs = -(-bs // layout.data_size) * layout.data_size  # splits over the data axis
    totals: dict[str, np.ndarray] = {}
    n = 0
    for xb, yb in batches(x, y, bs, seed=0, epoch=0, shuffle=False, drop_last=False):
        real = len(yb)
        weight = np.ones(bs, np.float32)
        if real < bs:  # the ragged last batch: padded (repeating its examples), masked
            pad = np.resize(np.arange(real), bs - real)
            xb, yb = np.concatenate([xb, xb[pad]]), np.concatenate([yb, yb[pad]])
            weight[real:] = 0.0
        xd, yd, _, _ = place_batch(xb, yb, seeds=program.seeds, layout=layout)
        wd = place(weight, batch_axis=0, layout=layout)
        m = jax.device_get(program.eval_batch(model, xd, yd, wd))
        if estimate:
            m.update(jax.device_get(program.estimate_batch(model, xd, yd)))
        for key, v in m.items():
            totals[key] = totals.get(key, 0.0) + np.atleast_1d(np.asarray(v, np.float64)) * real
        n += real
    return {key: v / max(n, 1) for key, v in totals.items()}
