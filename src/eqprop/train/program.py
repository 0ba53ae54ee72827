"""Building a run from its configuration: data, K networks, the jitted step and evaluation.

:func:`build_program` is the only place where the trainer calls the library's
relaxation API (:func:`eqprop.build.build_solvers`, :func:`eqprop.update.make_train_step`,
:func:`eqprop.estimate.free_phase`, :func:`eqprop.diagnostics.diagnostics`): the rest of
:mod:`eqprop.train` sees the resulting functions only.

Initialisation: ``init_key, root = split(PRNGKey(train.seed))``; ``K = train.seeds``
networks are initialised from ``split(init_key, K)`` (``init_key`` itself when K = 1)
and stacked (:func:`~eqprop.train.step.stack`); ``root`` is the state's key.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterator

import equinox as eqx
import jax
import numpy as np

from .. import build
from ..config import Config, ConfigError
from ..data import Dataset, batches, flip_crop, load, num_batches
from ..guards import EqpropWarning
from ..jitting import jit
from ..network import BoxProjectedModel, FeedbackModel
from ..parallel import Layout, configure, make_layout
from ..pruning import NoPruning, Pruner
from ..update import init_optimizer, make_train_step
from .evaluate import make_estimate_eval, make_eval
from .placement import place_state
from .step import TrainState, init_state, make_step, stack

__all__ = ["Program", "build_program", "load_dataset", "n_train_batches", "augmentation"]

PyTree = Any


@dataclass(frozen=True)
class Program:
    """Everything rebuilt from a config: data, the initial state, the jitted functions.

    **Fields:**

    - ``config``, ``dataset``; ``seeds``: ``K``; ``n_batches``: batches per epoch.
    - ``state``: the initial :class:`~eqprop.train.step.TrainState` (stacked when K > 1),
      placed on the device(s).
    - ``step(state, x, y[, u0, warm]) -> (state, metrics)``: jitted; see
      :func:`~eqprop.train.step.make_step`.
    - ``eval_batch(model, x, y, weight) -> metrics``: jitted (vmapped over seeds when
      K > 1); see :func:`~eqprop.train.evaluate.make_eval`.
    - ``diagnose(model, x, y, key) -> dict``: the diagnostics of one network
      (:func:`eqprop.diagnostics.diagnostics` with the run's estimator and solvers).
    - ``estimate_batch(model, x, y) -> metrics``: jitted (vmapped over seeds when
      K > 1): the figures of the run's estimate on a batch
      (:func:`~eqprop.train.evaluate.make_estimate_eval`).
    - ``estimator``: the gradient estimator; ``solvers``: the
      :class:`~eqprop.solvers.PhaseSolvers` of ``[dynamics]``.
    - ``pruner``: the :class:`~eqprop.pruning.Pruner` of ``[pruning]`` (applied by the
      epoch loop after each epoch where it is due).
    - ``layout``: the :class:`~eqprop.parallel.Layout` of ``[parallel]`` (the ``(seed,
      data)`` mesh, or one device) through which every batch and state is placed.
    """

    config: Config
    dataset: Dataset
    seeds: int
    n_batches: int
    state: TrainState
    step: Callable[..., tuple[TrainState, dict[str, Any]]]
    eval_batch: Callable[..., dict[str, Any]]
    diagnose: Callable[..., dict[str, Any]]
    estimator: Any = None
    solvers: Any = None
    estimate_batch: Callable[..., dict[str, Any]] | None = None
    pruner: Pruner = NoPruning()
    layout: Layout = Layout()

    @property
    def model(self) -> PyTree:
        """The initial model (stacked when K > 1)."""
        return self.state.model

    @property
    def opt_state(self) -> PyTree:
        """The initial optimizer state (stacked when K > 1)."""
        return self.state.opt_state

    def epoch_batches(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The ``n_batches`` training batches of ``epoch`` (1-based) in order.

        **Returns:** an iterator of ``(x (B, ...), y (B,), indices (B,))``, the order
        ``batches(..., seed=train.seed, epoch=epoch - 1)``; the examples as stored (with
        ``[data] augment`` the step augments them on the device, see :func:`augmentation`).
        """
        c = self.config
        return islice(batches(self.dataset.x_train, self.dataset.y_train, c.data.batch_size,
                              seed=c.train.seed, epoch=epoch - 1, drop_last=c.data.drop_last,
                              with_index=True),
                      self.n_batches)


def load_dataset(config: Config) -> Dataset:
    """The ``[data]`` set (``validation`` split seeded by ``train.seed``)."""
    d = config.data
    return load(d.name, path=d.path, validation=d.validation, seed=config.train.seed)


def augmentation(config: Config, ds: Dataset) -> Callable | None:
    """The augmentation the training step applies to every training batch.

    **Returns:** :func:`eqprop.data.augment.flip_crop` (``(key, x (B, H, W, C)) -> x``:
    random horizontal flip, zero-pad-4 random crop) with ``[data] augment = true``, else
    ``None``. Evaluation never augments.

    **Raises:** :class:`~eqprop.config.ConfigError` when ``[data] augment`` is on for
    data that are not images; a ``UserWarning`` for images smaller than
    :data:`SMALL_IMAGE` (8x8 digits lose up to half of each image to the crop).
    """
    if not config.data.augment:
        return None
    if ds.x_train.ndim != 4:
        raise ConfigError(f"data.augment: needs image data (NHWC), but '{ds.name}' has "
                          f"examples of shape {ds.input_shape}")
    side = min(ds.x_train.shape[1:3])
    if side < SMALL_IMAGE:
        warnings.warn(f"data.augment: the pad-4 random crop moves '{ds.name}' images of "
                      f"{side}x{side} pixels by up to 4 in each direction and flips them; it "
                      f"is meant for images of {SMALL_IMAGE}x{SMALL_IMAGE} and larger "
                      "(CIFAR, ImageNet 32x32) and can stop learning here", EqpropWarning,
                      stacklevel=2)
    return flip_crop


#: the smallest image side for which the flip and pad-4 crop is used without a warning
SMALL_IMAGE = 16


def n_train_batches(config: Config, ds: Dataset) -> int:
    """Batches per epoch: all of them, capped by ``train.max_batches``.

    **Raises:** :class:`~eqprop.config.ConfigError` when there is no full batch.
    """
    n = num_batches(len(ds.x_train), config.data.batch_size, config.data.drop_last)
    if config.train.max_batches is not None:
        n = min(n, config.train.max_batches)
    if n == 0:
        raise ConfigError(f"data.batch_size: {config.data.batch_size} is larger than the "
                          f"{len(ds.x_train)} training examples of '{ds.name}' with drop_last")
    return n


def build_program(config: Config, dataset: Dataset | None = None) -> Program:
    """Data, ``K`` freshly initialised networks and optimizer states, jitted step and eval.

    **Arguments:** ``config``: a validated configuration; ``dataset``: the data set to
    use instead of loading ``[data]``.

    **Returns:** a :class:`Program` whose ``state`` is at global batch 0.

    **Raises:** :class:`~eqprop.config.ConfigError` when the estimator cannot train the
    model, the data do not fit the model, a batch is larger than the data, or ``[data]
    augment`` is on for data that are not images.
    """
    configure(config.parallel.devices)  # host devices, while JAX has not initialised yet
    build.configure_numerics(config)  # 64-bit mode; float32 products at float32 on a GPU
    ds = load_dataset(config) if dataset is None else dataset
    n_batches = n_train_batches(config, ds)
    augment = augmentation(config, ds)
    k = config.train.seeds
    try:
        layout = make_layout(config.parallel.devices, config.parallel.seed_devices, seeds=k,
                             batch_size=config.data.batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if jax.process_count() > 1:
        _check_multiprocess(config)
    init_key, _ = jax.random.split(jax.random.PRNGKey(config.train.seed))
    keys = [init_key] if k == 1 else list(jax.random.split(init_key, k))
    models = [build.build_model(config, input_size=ds.input_size, n_classes=ds.n_classes, key=kk,
                                input_shape=ds.input_shape, check=i == 0)  # the seeds share a shape
              for i, kk in enumerate(keys)]
    estimator = build.build_estimator(config)
    # The library's relaxation API, called here and nowhere else in the trainer.
    solvers = build.build_solvers(config)
    homeostasis = build.build_homeostasis(config)
    try:
        solvers.free.check(models[0])
        estimator.check(models[0])
        if homeostasis is not None:
            homeostasis.check(models[0])
    except ValueError as e:
        msg = str(e)  # messages that name their own key keep it; the rest are the estimator's
        # (or, for complex nudges on a non-holomorphic model, the activation's as much)
        keys = "estimator.name"
        if estimator.needs_complex() and not models[0].holomorphic:
            keys += (", model.dynamics" if isinstance(models[0], BoxProjectedModel)
                     else ", model.activation")
        raise ConfigError(msg if msg.startswith(("dynamics.", "homeostasis.", "estimator.", "model."))
                          else f"{keys}: {msg}") from None
    _check_baseline(config, models[0], homeostasis)
    _check_homeostasis(config, models[0], homeostasis)
    optimizer = build.build_optimizer(config, models[0], config.train.epochs * n_batches)
    pruner = build.build_pruner(config)
    probe_steps = config.diagnostics.free_steps or None

    base_step = make_train_step(estimator, optimizer, homeostasis, solvers.free)

    def relax(model, x):  # where the run's estimator reads predictions (bp: the forward pass)
        return estimator.inference(model, x, solvers.free)

    from ..diagnostics import compiled_figures, diagnostics

    figures = compiled_figures()  # this program's own: released with it

    def diagnose(model, x, y, key):
        return diagnostics(model, x, y, estimator, solvers, key, free_steps=probe_steps,
                           compiled=figures)

    eval_fn = make_eval(relax)
    estimate_fn = make_estimate_eval(relax, estimator)
    if k == 1:
        model = models[0]
        opt_state = init_optimizer(optimizer, model)
        eval_batch, estimate_batch = eval_fn, estimate_fn
    else:
        model = stack(models)
        opt_state = eqx.filter_vmap(lambda m: init_optimizer(optimizer, m))(model)
        eval_batch = eqx.filter_vmap(eval_fn, in_axes=(0, None, None, None))
        estimate_batch = eqx.filter_vmap(estimate_fn, in_axes=(0, None, None))
    # the figures of an evaluation replicated: every process reads them
    eval_batch = _replicated_output(eval_batch, layout)
    estimate_batch = _replicated_output(estimate_batch, layout)
    state = place_state(init_state(model, opt_state, seed=config.train.seed), layout)
    return Program(config=config, dataset=ds, seeds=k, n_batches=n_batches, state=state,
                   step=make_step(base_step, n_batches=n_batches, seeds=k, layout=layout,
                                  augment=augment),
                   eval_batch=jit(eval_batch), diagnose=diagnose, estimator=estimator,
                   solvers=solvers, estimate_batch=jit(estimate_batch), pruner=pruner,
                   layout=layout)


def _replicated_output(f: Callable, layout: Layout) -> Callable:
    """``f`` whose outputs are replicated over ``layout``'s devices (inside the jit)."""
    if layout.mesh is None:
        return f

    def g(*args):
        return layout.constrain(f(*args), ())

    return g


def _check_homeostasis(config: Config, model, homeostasis) -> None:
    """Jacobian homeostasis on a tied (energy-based) network: its Jacobian is the Hessian
    of the primitive, symmetric, so the penalty is identically zero and only costs its
    probes (about 3x per step, measured by a fresh user): a one-line warning."""
    if homeostasis is not None and config.estimator.name != "bp" and getattr(model, "symmetric", False):
        warnings.warn(EqpropWarning(
            "homeostasis.coef: the network's feedback is tied, so its Jacobian is symmetric and "
            "the homeostasis penalty is identically zero: it costs its probes every step for "
            "nothing (use it with model.feedback = 'untied')"), stacklevel=3)


def _check_baseline(config: Config, model, homeostasis) -> None:
    """The BP baseline trains the feed-forward counterpart (no relaxation, no feedback):
    Jacobian homeostasis, a penalty on the relaxation's Jacobian, is a one-line error
    (it would cost a relaxation per step for nothing); untied feedback weights, which BP
    leaves at their initialisation, a one-line warning."""
    if config.estimator.name != "bp":
        return
    if homeostasis is not None:
        raise ConfigError("homeostasis.coef: Jacobian homeostasis shapes the recurrent network's "
                          "relaxation, which estimator 'bp' never runs (it trains the feed-forward "
                          "counterpart); set homeostasis.coef = 0 for the BP baseline")
    if isinstance(model, FeedbackModel) and not model.symmetric:
        warnings.warn(EqpropWarning(
            "model.feedback: estimator 'bp' never uses the untied feedback weights: they keep "
            "their initialisation (the BP baseline is the forward projections alone)"), stacklevel=3)


def _check_multiprocess(config: Config) -> None:
    """Refuse what a multi-process run does not do yet (one line naming the key)."""
    if config.train.warm_start:
        raise ConfigError("train.warm_start: not available in a multi-process run (the "
                          "per-example states live on every process's devices)")
    if config.pruning.method != "none":
        raise ConfigError("pruning.method: not available in a multi-process run yet")
