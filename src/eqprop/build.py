"""From a validated :class:`~eqprop.config.Config` to the objects that train.

``build_solvers``, ``build_estimator``, ``build_model``, ``build_optimizer`` and
``build_homeostasis`` are the only place where configuration meets the library, so scripts and the CLI agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .config import Config, ConfigError, DynamicsSettings
from .estimate import Estimator, make_estimator
from .homeostasis import Homeostasis
from .network import EquilibriumModel
from .linear import make_linear_solver
from .pruning import Pruner, Scheduled, connections, keep_pruned, prunable
from .registry import ESTIMATORS, PRUNERS, SOLVERS
from .settings import SettingError, settings_of
from .solvers import FixedPoint, PhaseSolvers


def phase_solvers(dynamics: Any = None, **keys: Any) -> PhaseSolvers:
    """The solver objects of a ``[dynamics]`` section, or of its keys given as keywords
    (absent keys take the section's defaults; ``solver`` names the free phase's solver).

    - free phase: the registered solver ``solver`` with ``free_steps``, ``dt``, ``tol``,
      ``tol_fraction``, ``check_every``, ``unroll``, ``update``, ``bound = state_bound`` and its own
      settings (e.g. ``anderson_memory`` for ``Anderson.memory``);
    - nudged phases: :class:`~eqprop.solvers.FixedPoint` with ``nudged_steps`` and the
      same ``dt``, ``tol``, ``check_every``, ``unroll``, ``update`` and bound (no
      ``tol_fraction``);
    - linear solves: the registered linear solver ``linear_solver`` with ``dt``,
      ``linear_tol``, ``linear_steps``.

    **Arguments:** ``dynamics``: a parsed ``[dynamics]`` section (a dataclass) or
    ``None``; ``**keys``: ``[dynamics]`` keys overriding it (``dt`` in units of the
    relaxation time).

    **Returns:** the :class:`~eqprop.solvers.PhaseSolvers` (with ``converged_tol``).

    **Raises:** ``ValueError`` for an unknown key or solver name, or a value a solver
    rejects (e.g. ``free_steps < 1``).
    """
    values = {"solver": "fixed-point", **{s.key: s.default for s in settings_of(DynamicsSettings)}}
    if dynamics is not None:
        values.update(to_dict_section(dynamics))
    name = keys.get("solver", values["solver"])
    cls = SOLVERS.get(name)
    own = {f.key: f.name for f in settings_of(cls)}
    for key in keys:
        if key not in values and key not in own:
            raise ValueError(f"unknown [dynamics] key {key!r} for solver {name!r}; allowed: "
                             f"{', '.join([*values, *own])}")
    values.update(keys)
    common = dict(dt=values["dt"], tol=values["tol"], check_every=values["check_every"],
                  update=values["update"], bound=values["state_bound"], unroll=values["unroll"])
    free = cls(steps=values["free_steps"], tol_fraction=values["tol_fraction"], **common,
               **{field: values[key] for key, field in own.items() if key in values})
    nudged = FixedPoint(steps=values["nudged_steps"], **common)
    linear = make_linear_solver(values["linear_solver"], dt=values["dt"], rtol=values["linear_tol"],
                                max_steps=values["linear_steps"], update=values["update"])
    return PhaseSolvers(free=free, nudged=nudged, linear=linear, converged_tol=values["converged_tol"])


def to_dict_section(section: Any) -> dict[str, Any]:
    """A parsed section's keys and values (``{key: value}``)."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


def build_solvers(config: Config) -> PhaseSolvers:
    """The solvers of ``[dynamics]`` (see :func:`phase_solvers`)."""
    return phase_solvers(config.dynamics)


def estimator_settings(config: Config) -> dict:
    """``[estimator]`` as keyword settings (name included), for :func:`~eqprop.estimate.parse_spec`."""
    e = config.estimator
    return {"name": e.name, **{f.name: getattr(e, f.name) for f in settings_of(ESTIMATORS.get(e.name))
                               if hasattr(e, f.name)}}


def build_estimator(config: Config) -> Estimator:
    """The estimator named in ``[estimator]`` with its settings, wired to the solvers of
    ``[dynamics]`` (:func:`~eqprop.estimate.make_estimator`, whose ``ValueError`` passes
    through)."""
    settings = estimator_settings(config)
    return make_estimator(settings.pop("name"), build_solvers(config), **settings)


def build_homeostasis(config: Config) -> Homeostasis | None:
    """Jacobian homeostasis of ``[homeostasis]``, or ``None`` when ``coef == 0`` (off)."""
    h = config.homeostasis
    if h.coef == 0:
        return None
    return Homeostasis(coef=h.coef, probes=h.probes, every=h.every)


def configure_numerics(config: Config) -> None:
    """Set JAX's process-wide numerics for ``config``, before anything is traced: 64-bit
    mode (``jax_enable_x64``) for ``[model] dtype = "float64"``, and products of float32
    operands at float32 (``jax_default_matmul_precision = "highest"``) unless the user has
    set that option. Without it a GPU or TPU rounds float32 operands to TensorFloat-32 or
    bfloat16 in every product that does not set its own precision (the networks' own do:
    :data:`eqprop.network.ops.PRECISION`): a plugin model's, and the linear solver's of
    the exact references. Lower precision is ``[model] compute_dtype``.
    :func:`build_model` and :func:`eqprop.train.build_program` call it.

    **Arguments:** ``config``: the run's configuration.
    """
    if getattr(config.model, "dtype", None) == "float64":
        jax.config.update("jax_enable_x64", True)
    if jax.config.jax_default_matmul_precision is None:
        jax.config.update("jax_default_matmul_precision", "highest")


def build_model(config: Config, *, input_size: int, n_classes: int, key: jax.Array,
                input_shape: tuple[int, ...] | None = None, check: bool = True) -> EquilibriumModel:
    """The network of ``[model]`` for inputs of ``input_size`` features and ``n_classes`` classes.

    The registered model kind ``config.model.kind`` made from its settings, then its
    ``build`` (:meth:`~eqprop.network.ModelKind.build`), given ``input_shape`` when its
    ``build`` declares that keyword (kinds written before it existed, e.g. plugins, are
    built without it). It sets the process's numerics first (:func:`configure_numerics`:
    64-bit mode for ``[model] dtype = "float64"``, float32 products at float32), as
    :func:`eqprop.train.build_program` does.

    **Arguments:** ``config``; ``input_size``: features per example; ``n_classes``:
    classes of the data; ``key``: PRNG key of the initialisation; ``input_shape``: the
    shape of one example (``Dataset.input_shape``; images NHWC), ``None`` when unknown;
    ``check``: trace the model's contract on abstract arrays first
    (:func:`eqprop.network.contract.check_shapes`: nothing is computed).

    **Returns:** the :class:`~eqprop.network.EquilibriumModel`.

    **Raises:** :class:`~eqprop.config.ConfigError` when the settings do not fit the
    data; :class:`~eqprop.network.contract.ContractError` (a ``ValueError``) when the
    model's methods return shapes the contract does not allow (a plugin's field missing
    a population, a readout built for another number of classes).
    """
    import inspect

    from .registry import MODELS

    m = config.model
    configure_numerics(config)  # as the trainer does (a review's model came out float32)
    kind = MODELS.get(m.kind)(**m.settings())
    params = inspect.signature(kind.build).parameters
    shape = ({"input_shape": None if input_shape is None else tuple(input_shape)}
             if "input_shape" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
             else {})
    model = kind.build(input_size=input_size, n_classes=n_classes, key=key, **shape)
    if check:
        from .network.contract import check_shapes

        dtype = jnp.float64 if getattr(m, "dtype", None) == "float64" else jnp.float32
        check_shapes(model, tuple(input_shape) if input_shape else (input_size,), n_classes, dtype,
                     built_by=f"{type(kind).__name__}.build")
    return model


def build_pruner(config: Config, model: EquilibriumModel | None = None) -> Pruner:
    """The pruning method of ``[pruning]`` (:mod:`eqprop.pruning`; ``NoPruning`` by default).

    **Arguments:** ``config``; ``model``: when given, the method's settings are checked
    against its prunable matrices (e.g. a target sparsity that would disconnect a neuron).

    **Raises:** :class:`~eqprop.config.ConfigError` naming the ``pruning`` key at fault.
    """
    pruner = PRUNERS.get(config.pruning.method)(**config.pruning.settings())
    if isinstance(pruner, Scheduled) and pruner.start > config.train.epochs:
        raise ConfigError(f"pruning.start: {pruner.start} is after the last epoch "
                          f"({config.train.epochs}): nothing would be pruned")
    if model is not None:
        from .network import named_parameters, parameters

        shapes = {n: tuple(w.shape) for n, w in named_parameters(parameters(model)).items()
                  if prunable(n, w)}
        try:
            pruner.check(shapes, connections(model))
        except SettingError as e:
            raise ConfigError(f"pruning.{e.key}: {e}") from None
    return pruner


def learning_rate(config: Config, steps_total: int) -> optax.Schedule | float:
    """``[optim] lr``, or with ``schedule = "cosine"`` a cosine decay from it to 0 over
    ``max(steps_total, 1)`` optimizer steps (an optax schedule)."""
    o = config.optim
    if o.schedule == "cosine":
        return optax.cosine_decay_schedule(o.lr, max(steps_total, 1))
    return o.lr


def build_optimizer(config: Config, model: EquilibriumModel, steps_total: int = 1) -> optax.GradientTransformation:
    """The optax optimizer of ``[optim]``.

    ``sgd`` (with ``momentum`` when nonzero) and ``adam`` add ``weight_decay`` to the
    gradient before the optimizer (L2); ``adamw`` decouples it (``optax.adamw``).
    ``momentum`` is SGD's momentum, and for ``adam`` and ``adamw`` the decay of the first
    moment (optax's ``b1``; Kingma and Ba 2015). ``lr_multipliers`` scale named parameters' updates after the
    optimizer (keys as in :func:`~eqprop.network.named_parameters`, e.g.
    ``"weights.input->h1"``, or a suffix after a dot such as the projection name
    ``"input->h1"``); ``clip_norm > 0`` clips the gradient's global norm first. With
    ``[pruning]``, the whole is wrapped in :func:`~eqprop.pruning.keep_pruned` (the masks
    in its state; the method's L1 term added to the gradient first).

    **Arguments:** ``config``; ``model``: names the parameters for ``lr_multipliers``;
    ``steps_total``: optimizer steps of the run (the cosine schedule's length).

    **Returns:** an ``optax.GradientTransformation``.

    **Raises:** :class:`~eqprop.config.ConfigError` for an ``lr_multipliers`` key that
    names no parameter, or ``[pruning]`` settings the model cannot meet.
    """
    o = config.optim
    lr = learning_rate(config, steps_total)
    if o.name == "sgd":
        opt = optax.sgd(lr, momentum=o.momentum or None)
        if o.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(o.weight_decay), opt)
    elif o.name == "adam":
        opt = optax.adam(lr, b1=o.momentum)
        if o.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(o.weight_decay), opt)
    else:
        opt = optax.adamw(lr, b1=o.momentum, weight_decay=o.weight_decay)
    if o.lr_multipliers:
        opt = optax.chain(opt, _scale_by_name(model, dict(o.lr_multipliers)))
    if o.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
    if config.pruning.method != "none":  # the masks live in the optimizer state
        opt = keep_pruned(opt, l1=build_pruner(config, model).l1)
    return opt


def _scale_by_name(model: EquilibriumModel, multipliers: dict[str, float]) -> optax.GradientTransformation:
    from .network import named_parameters, parameters

    names = named_parameters(parameters(model))
    unknown = [k for k in multipliers if not any(n == k or n.endswith("." + k) for n in names)]
    if unknown:
        raise ConfigError(
            f"optim.lr_multipliers: unknown parameter {unknown[0]!r}; known: {', '.join(names)}"
        )

    def factor(name: str) -> float:
        for k, f in multipliers.items():
            if name == k or name.endswith("." + k):
                return f
        return 1.0

    params = parameters(model)
    leaves, treedef = jax.tree.flatten(params)
    factors = jax.tree.unflatten(treedef, [factor(n) for n in names])
    del leaves

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, f: u * f, updates, factors), state

    return optax.GradientTransformation(lambda p: optax.EmptyState(), update)
