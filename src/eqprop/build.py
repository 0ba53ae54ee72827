"""From a validated :class:`~eqprop.config.Config` to the objects that train.

``build_dynamics``, ``build_estimator``, ``build_model``, ``build_optimizer`` and
``build_homeostasis`` are the only place where configuration meets the library, so scripts and the CLI agree.
"""

from __future__ import annotations

from dataclasses import asdict

import jax
import jax.numpy as jnp
import optax

from .config import Config, ConfigError
from .estimate import Estimator, make_estimator
from .homeostasis import Homeostasis
from .network import DenseNetwork, EquilibriumModel, graph, layered
from .relax import Dynamics


def build_dynamics(config: Config) -> Dynamics:
    """The relaxation settings of ``[dynamics]`` (the section is a :class:`Dynamics`)."""
    return config.dynamics


def estimator_settings(config: Config) -> dict:
    """``[estimator]`` as keyword settings (name included), for :func:`~eqprop.estimate.parse_spec`."""
    return asdict(config.estimator)


def build_estimator(config: Config) -> Estimator:
    """The estimator named in ``[estimator]`` with its settings."""
    from .estimate import SETTINGS

    e = config.estimator
    settings = {k: v for k, v in asdict(e).items() if k in SETTINGS[e.name]}
    return make_estimator(e.name, build_dynamics(config), **settings)


def build_homeostasis(config: Config) -> Homeostasis | None:
    """Jacobian homeostasis of ``[homeostasis]``, or ``None`` when ``coef == 0`` (off)."""
    h = config.homeostasis
    if h.coef == 0:
        return None
    return Homeostasis(coef=h.coef, probes=h.probes, every=h.every)


def build_model(config: Config, *, input_size: int, n_classes: int, key: jax.Array) -> EquilibriumModel:
    """The network of ``[model]`` for inputs of ``input_size`` features and ``n_classes`` classes.

    The registered model kind ``config.model.kind`` made from its settings, then its
    ``build``. **Raises:** :class:`~eqprop.config.ConfigError` when the settings do not
    fit the data.
    """
    from .registry import MODELS

    m = config.model
    return MODELS.get(m.kind)(**m.settings()).build(input_size=input_size, n_classes=n_classes,
                                                     key=key)


def learning_rate(config: Config, steps_total: int) -> optax.Schedule | float:
    """The base learning rate, or a cosine decay over ``steps_total`` steps."""
    o = config.optim
    if o.schedule == "cosine":
        return optax.cosine_decay_schedule(o.lr, max(steps_total, 1))
    return o.lr


def build_optimizer(config: Config, model: EquilibriumModel, steps_total: int = 1) -> optax.GradientTransformation:
    """The optax optimizer of ``[optim]``; ``lr_multipliers`` scale named projections'
    updates (keys as in ``named_parameters``, e.g. ``"weights.input->h1"``, or a projection
    name ``"input->h1"``)."""
    o = config.optim
    lr = learning_rate(config, steps_total)
    if o.name == "sgd":
        opt = optax.sgd(lr, momentum=o.momentum or None)
        if o.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(o.weight_decay), opt)
    elif o.name == "adam":
        opt = optax.adam(lr)
        if o.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(o.weight_decay), opt)
    else:
        opt = optax.adamw(lr, weight_decay=o.weight_decay)
    if o.lr_multipliers:
        opt = optax.chain(opt, _scale_by_name(model, dict(o.lr_multipliers)))
    if o.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)
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
