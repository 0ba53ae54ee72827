"""Model kinds: the variants of the ``[model]`` section, one frozen settings class each.

A model kind is a frozen dataclass whose fields, declared with
:func:`~eqprop.settings.setting`, are its ``[model]`` keys, registered once in
:data:`~eqprop.registry.MODELS`; :meth:`ModelKind.build` makes the network. The
configuration (``kind = "layered"``), ``eqprop config``, ``docs/config.md`` and the
error messages read these classes, so a new kind is one class plus one registration::

    @MODELS.register("my-kind")
    @dataclass(frozen=True)
    class MyKind(ModelKind):
        width: int = setting(64, "Units per population.", bounds=POSITIVE_INT)

        def build(self, *, input_size, n_classes, key):
            return MyField(...)

Validation that involves more than one key runs in ``__post_init__`` and raises
:class:`~eqprop.settings.SettingError` naming the key to blame (the configuration
reports it as ``model.key: ...``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from ..config import ConfigError
from ..registry import ACTIVATIONS, MODELS, READOUTS
from ..settings import POSITIVE, POSITIVE_INT, Bounds, FrozenMap, SettingError, setting
from .base import EquilibriumModel
from .conv import convnet
from .dense import COMPUTE_DTYPES, INPUT, graph, layered

__all__ = ["ModelKind", "DenseKind", "Layered", "Graph", "Conv", "FEEDBACKS", "DTYPES"]

FEEDBACKS = ("tied", "untied")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class ModelKind(abc.ABC):
    """Abstract model kind: settings (the fields) and :meth:`build`."""

    @abc.abstractmethod
    def build(self, *, input_size: int, n_classes: int, key: jax.Array,
              input_shape: tuple[int, ...] | None = None) -> EquilibriumModel:
        """The network for inputs of ``input_size`` features and ``n_classes`` classes.

        **Arguments:** ``input_size``: features per example (the flattened input);
        ``n_classes``: number of classes of the data; ``key``: PRNG key of the
        initialisation; ``input_shape``: the shape of one example (``Dataset.input_shape``,
        e.g. ``(28, 28, 1)``, images NHWC), for kinds that need more than its size (a
        convolutional network); ``None`` when unknown. A kind whose ``build`` does not
        declare it is built without it (:func:`eqprop.build.build_model`).

        **Returns:** the model (an :class:`~eqprop.network.EquilibriumModel`).

        **Raises:** :class:`~eqprop.config.ConfigError` when the settings do not fit the
        data (one line naming ``model.key``).
        """


@dataclass(frozen=True)
class DenseKind(ModelKind):
    """Settings shared by the dense networks (:class:`~eqprop.network.DenseNetwork`).

    ``asymmetry_angle`` is in degrees: untied feedback starts at ``B = sin(alpha) R +
    cos(alpha) W^T``, ``R`` a random matrix orthogonalised against ``W^T`` and scaled to
    ``W``'s norm, so the angle between ``B`` and ``W^T`` is exactly ``alpha``
    (Laborieux and Zenke 2024, arXiv 2309.02214).

    **Raises:** :class:`~eqprop.settings.SettingError` (key ``asymmetry_angle``) for a
    nonzero angle with tied feedback.
    """

    feedback: str = setting("tied", "Feedback weights tied to (or independent of) feedforward; untied ones "
                            "start at asymmetry_angle (default 0: a copy) and are trained on their own.",
                            choices=FEEDBACKS)
    asymmetry_angle: float = setting(
        0.0, "Angle in degrees between feedback and transposed feedforward weights (untied only).",
        bounds=Bounds(lo=0, hi=90))
    activation: str = setting("sigmoid4", "Neuron activation.", choices=ACTIVATIONS)
    readout: str = setting("softmax", "Output cost.", choices=READOUTS)
    dtype: str = setting("float32", "Floating-point precision.", choices=DTYPES)
    init_scale: float = setting(1.0, "Scale of the weight initialisation.", bounds=POSITIVE)
    compute_dtype: str = setting(
        "float32", "Operands of the relaxation's matmuls (float32 states and accumulation).",
        choices=COMPUTE_DTYPES)

    def __post_init__(self) -> None:
        if self.asymmetry_angle != 0.0 and self.feedback == "tied":
            raise SettingError("asymmetry_angle", "only meaningful with model.feedback = 'untied', "
                               f"got {self.asymmetry_angle} with model.feedback = 'tied'")

    def network_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~eqprop.network.graph` these settings give."""
        return dict(feedback=self.feedback, asymmetry_angle=self.asymmetry_angle,
                    activation=self.activation, readout=self.readout,
                    dtype=jnp.dtype(self.dtype), init_scale=self.init_scale,
                    compute_dtype=self.compute_dtype)


@MODELS.register("layered")
@dataclass(frozen=True)
class Layered(DenseKind):
    """A stack of layers, each coupled to the next (:func:`~eqprop.network.layered`)."""

    sizes: tuple[int, ...] = setting(
        (784, 256, 256, 10),
        "[n_in, hidden..., last]; softmax readout: last = number of classes, read from the last "
        "hidden layer; mse: last = output population.",
        bounds=POSITIVE_INT, min_len=2)

    def build(self, *, input_size: int, n_classes: int, key: jax.Array,
              input_shape: tuple[int, ...] | None = None) -> EquilibriumModel:
        """:func:`~eqprop.network.layered` from ``sizes`` (``input_shape`` unused).

        **Raises:** :class:`~eqprop.config.ConfigError` when ``sizes[0] != input_size``,
        ``sizes[-1] != n_classes`` or :func:`~eqprop.network.layered` rejects the
        settings.
        """
        if self.sizes[0] != input_size:
            # the default sizes are Fashion-MNIST's MLP, the default data the digits: a review's
            # empty config met this first
            hint = (f" (the default, {list(self.sizes)}, is the Fashion-MNIST MLP's: set model.sizes, "
                    f"e.g. [{input_size}, 64, {n_classes}])" if self.sizes == type(self)().sizes else "")
            raise ConfigError(f"model.sizes: the first size must be the input size {input_size} "
                              f"of the data, got {self.sizes[0]}{hint}")
        try:
            last = READOUTS.get(self.readout).output_units(n_classes)
        except ValueError as err:
            raise ConfigError(f"model.readout: {err}") from None
        if self.sizes[-1] != last:
            what = (f"the number of classes {n_classes} of the data" if last == n_classes else
                    f"{last}, the output units of readout {self.readout!r} for {n_classes} classes")
            raise ConfigError(f"model.sizes: the last size must be {what}, got {self.sizes[-1]}")
        try:
            return layered(list(self.sizes), key=key, n_classes=n_classes, **self.network_kwargs())
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None


def _quoted(names) -> str:
    return ", ".join(f"'{n}'" for n in names)


@MODELS.register("graph")
@dataclass(frozen=True)
class Graph(DenseKind):
    """Named populations joined by directed projections (:func:`~eqprop.network.graph`).

    **Raises:** :class:`~eqprop.settings.SettingError` for a population named
    ``"input"``, no population, no projection, a projection with an unknown end, into
    the input, a self-loop or a duplicate, or an ``output`` that is not a population.
    """

    populations: Mapping[str, int] = setting(
        FrozenMap(), f"Population name -> size; '{INPUT}' is reserved.", bounds=POSITIVE_INT)
    projections: tuple[tuple[str, str], ...] = setting((), "Directed connections [src, dst].")
    output: str = setting("out", "Output population (the nudged one).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if INPUT in self.populations:
            raise SettingError(f"populations.{INPUT}", f"the name '{INPUT}' is reserved "
                               "for the clamped input; choose another population name")
        if not self.populations:
            raise SettingError("populations", "kind = 'graph' needs at least one population")
        if not self.projections:
            raise SettingError("projections", "kind = 'graph' needs at least one projection")
        known = (INPUT, *self.populations)
        seen: set[tuple[str, str]] = set()
        for i, (src, dst) in enumerate(self.projections):
            where = f"projections[{i}]"
            for end in (src, dst):
                if end not in known:
                    raise SettingError(where, f"unknown population '{end}'; allowed: {_quoted(known)}")
            if dst == INPUT:
                raise SettingError(where, f"destination may not be '{INPUT}' (input is clamped)")
            if src == dst:
                raise SettingError(where, f"self-loop '{src}' -> '{dst}' is not allowed")
            if (src, dst) in seen:
                raise SettingError(where, f"duplicate projection '{src}' -> '{dst}'")
            seen.add((src, dst))
        if self.output not in self.populations:
            raise SettingError("output", "must be one of the declared populations "
                               f"{_quoted(self.populations)}, got '{self.output}'")

    def build(self, *, input_size: int, n_classes: int, key: jax.Array,
              input_shape: tuple[int, ...] | None = None) -> EquilibriumModel:
        """:func:`~eqprop.network.graph` from these settings (``input_shape`` unused).

        **Raises:** :class:`~eqprop.config.ConfigError` when :func:`~eqprop.network.graph`
        rejects them (e.g. tied ``[a, b]`` and ``[b, a]``, or an ``mse`` readout whose
        output population is not ``n_classes`` wide).
        """
        try:
            return graph(dict(self.populations), [list(p) for p in self.projections],
                         input_size=input_size, n_classes=n_classes, key=key, output=self.output,
                         **self.network_kwargs())
        except ValueError as err:
            raise ConfigError(f"model: {err}") from None


@MODELS.register("conv")
@dataclass(frozen=True)
class Conv(ModelKind):
    """A convolutional equilibrium network (:func:`~eqprop.network.convnet`): conv
    populations ``c1 .. cK`` (3x3 kernels, ``SAME``, 2x2 softmax pooling where ``pool``
    says), a dense output population ``out`` and the readout; images NHWC (Laborieux and
    Zenke 2022, arXiv 2209.00530; 2024, arXiv 2309.02214).

    **Raises:** :class:`~eqprop.settings.SettingError` (key ``asymmetry_angle``) for a
    nonzero angle with tied feedback, (key ``pool``) for a ``pool`` whose length is not
    that of ``channels``, (key ``pool_temperature``) for a temperature other than 1 where
    nothing pools.
    """

    channels: tuple[int, ...] = setting((16, 32), "Channels of the conv populations c1, c2, ...",
                                        bounds=POSITIVE_INT, min_len=1)
    pool: tuple[int, ...] = setting(
        (), "Per conv population, 1 where its projection pools 2x2 (halving H and W), 0 where "
        "not; [] = every one pools.", bounds=Bounds(lo=0, hi=1))
    output_size: int = setting(64, "Units of the dense output population (read by the readout).",
                               bounds=POSITIVE_INT)
    pool_temperature: float = setting(1.0, "Temperature of the softmax pooling.", bounds=POSITIVE)
    feedback: str = setting("tied", "Feedback tied to (the VJP of) the forward maps, or independent "
                            "kernels that start at asymmetry_angle (default 0: a copy) and are trained on "
                            "their own.", choices=FEEDBACKS)
    asymmetry_angle: float = setting(
        0.0, "Angle in degrees between feedback and forward kernels (untied only).",
        bounds=Bounds(lo=0, hi=90))
    activation: str = setting("dsilu", "Neuron activation.", choices=ACTIVATIONS)
    readout: str = setting("softmax", "Output cost.", choices=READOUTS)
    dtype: str = setting("float32", "Floating-point precision.", choices=DTYPES)
    init_scale: float = setting(1.0, "Scale of the kernels' initialisation.", bounds=POSITIVE)
    compute_dtype: str = setting(
        "float32", "Operands of the relaxation's convolutions and matmuls (float32 states and "
        "accumulation).", choices=COMPUTE_DTYPES)

    def __post_init__(self) -> None:
        if self.asymmetry_angle != 0.0 and self.feedback == "tied":
            raise SettingError("asymmetry_angle", "only meaningful with model.feedback = 'untied', "
                               f"got {self.asymmetry_angle} with model.feedback = 'tied'")
        if self.pool and len(self.pool) != len(self.channels):
            raise SettingError("pool", f"one entry per conv population ({len(self.channels)} "
                               f"channels), got {len(self.pool)}")
        if self.pool_temperature != 1.0 and self.pool and not any(self.pool):
            raise SettingError("pool_temperature", "applies to a pooling projection; model.pool "
                               f"= {list(self.pool)} pools nowhere")

    def build(self, *, input_size: int, n_classes: int, key: jax.Array,
              input_shape: tuple[int, ...] | None = None) -> EquilibriumModel:
        """:func:`~eqprop.network.convnet` for images of ``input_shape``.

        **Raises:** :class:`~eqprop.config.ConfigError` (one line naming the key) when
        the data are not images (``input_shape`` unknown or not ``(H, W[, C])``), a
        pooling would leave less than one pixel, or the readout does not fit.
        """
        if input_shape is None:
            raise ConfigError("model.kind: 'conv' needs the data's image shape (H, W, C); "
                              f"only the input size {input_size} was given")
        try:
            return convnet(input_shape, self.channels, n_classes=n_classes, key=key,
                           pool=tuple(bool(p) for p in self.pool) or None,
                           output_size=self.output_size, feedback=self.feedback,
                           asymmetry_angle=self.asymmetry_angle, activation=self.activation,
                           readout=self.readout, dtype=jnp.dtype(self.dtype),
                           init_scale=self.init_scale, temperature=self.pool_temperature,
                           compute_dtype=self.compute_dtype)
        except ValueError as err:
            raise ConfigError(f"model.{err}") from None
