"""Convolutional equilibrium networks: conv feature maps coupled by 3x3 convolutions with
softmax pooling, then a dense output population and the readout (NHWC throughout).

The architecture of holomorphic EP's CNN (Laborieux and Zenke 2022, arXiv 2209.00530;
2024, arXiv 2309.02214). Populations ``c1 .. cK`` are feature maps ``(B, H_p, W_p,
C_p)``, ``out`` is a vector ``(B, n_out)``; the input ``x`` ``(B, H, W, C)`` is clamped.
The forward map of a conv projection ``src -> dst`` is

    ``f_dst(a_src) = pool(conv(a_src, W_dst) + b_dst)``

(3x3 kernel, padding ``SAME``, ``pool`` the 2x2 softmax pooling :func:`softmax_pool`
where the spatial size halves, the identity elsewhere); the last map is dense,
``f_out(a_cK) = flatten(a_cK) W_out + b_out``.

With **tied** feedback the network derives from the primitive (negative energy)

    ``Phi(a) = sum_p < f_p(a_{p-1}), a_p >``            (``a_0 = x``),

as in the authors' code, whose pooling sits inside the primitive. Its gradient is the
interaction ``h_p(a) = dPhi/da_p = f_p(a_{p-1}) + (df_{p+1}/da_p)^T a_{p+1}``: the
feedback is the vector-Jacobian product of the next forward map (convolution *and*
pooling) at ``a_p``, taken with ``jax.vjp``/``jax.linear_transpose``, never written by
hand. Since softmax pooling is nonlinear, this feedback depends on ``a_p`` itself (through
the pooling's Jacobian): the dynamics stay energy-based (``dh/da`` is the Hessian of
``Phi``, symmetric), but a population is coupled to itself, so a pooled network is not
bipartite.

With **untied** feedback each pair has an independent kernel ``B`` of the forward
kernel's shape, and the feedback into ``src`` is the VJP of ``a_src -> pool(conv(a_src,
B) + b_dst)`` applied to ``a_dst`` (arXiv 2309.02214's code: a feedback convolution with
no bias of its own; here the forward bias sits inside its pooling too, so that ``B = W``
is exactly the tied network).

Complex states (holomorphic EP) are convolved as two real convolutions of their real
and imaginary parts; kernels stay real.
"""

from __future__ import annotations

import math
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array, lax

from ..complexmath import cexp
from ..activations import get_activation
from .base import (BipartiteModel, EnergyModel, FeedbackModel, FeedForwardModel, InteractionModel,
                   MixedPrecisionModel)
from .dense import COMPUTE_DTYPES, INPUT, feedback_at_angle
from .ops import PRECISION, input_batch
from .readout import Readout, make_readout

OUTPUT = "out"
KERNEL = 3
_DIMS_OI = ("NHWC", "HWOI", "NHWC")  # the kernel with its channel axes swapped
_DIMS = ("NHWC", "HWIO", "NHWC")


# -- softmax pooling -----------------------------------------------------------------


def softmax_pool(z: Array, temperature: float = 1.0) -> Array:
    """2x2 softmax pooling, stride 2 (the holomorphic pooling of Laborieux and Zenke 2022,
    arXiv 2209.00530): each window of four values ``z_i`` becomes

        ``sum_i z_i exp(z_i / T) / sum_i exp(z_i / T)``,

    a smooth maximum (the mean for ``T -> inf``, the maximum for ``T -> 0``), holomorphic in
    ``z`` (exp, products and sums only). For stability the window's largest real part
    (under ``stop_gradient``) is subtracted from the exponents, which leaves the ratio
    unchanged. An odd trailing row or column is dropped (``VALID`` windows).

    **Arguments:** ``z``: ``(..., H, W, C)``, real or complex, ``H, W >= 2``;
    ``temperature``: ``T > 0``.

    **Returns:** ``(..., H // 2, W // 2, C)``, the dtype of ``z``.
    """
    *lead, h, w, c = z.shape
    h2, w2 = h // 2, w // 2
    z = z[..., :2 * h2, :2 * w2, :].reshape(*lead, h2, 2, w2, 2, c)
    axes = (-4, -2)
    s = z / temperature
    top = lax.stop_gradient(jnp.max(s.real, axis=axes, keepdims=True))
    e = cexp(s - top)  # complex64: 7x faster than jnp.exp on this CPU (eqprop.complexmath)
    return jnp.sum(z * e, axis=axes) / jnp.sum(e, axis=axes)


def pooled_size(n: int) -> int:
    """Spatial size after one 2x2 pooling (``VALID``): ``n // 2``."""
    return n // 2


# -- the network ---------------------------------------------------------------------


class ConvDrive(eqx.Module):
    """What a conv network hoists out of the relaxation loop for a batch.

    ``inputs``: ``{"c1": f_c1(x) (B, H1, W1, C1)}``, the drive of the population fed by
    the clamped input (every other population's bias is added by its forward map);
    ``transposed``: ``W_out^T`` ``(n_out, n_flat)`` of a tied dense output projection,
    materialised once (in the compute dtype), or ``None``.
    """

    inputs: dict[str, Array]
    transposed: Array | None


class ConvNetwork(InteractionModel, EnergyModel, BipartiteModel, FeedbackModel, FeedForwardModel,
                  MixedPrecisionModel):
    """Convolutional equilibrium network; parameters ``weights``, ``biases``, ``readout``.

    Build one with :func:`convnet`.

    **Fields:**

    - ``weights``: the forward kernels ``{"input->c1": (3, 3, C_in, C1), "c1->c2": (3, 3,
      C1, C2), ..., "cK->out": (H_K W_K C_K, n_out)}``; with untied feedback also the
      feedback ``{"c2->c1": (3, 3, C1, C2), ..., "out->cK": (n_out, H_K W_K C_K)}`` (a
      feedback kernel has its forward kernel's shape: it is used as a forward map whose
      VJP is the feedback; the dense feedback matrix has ``W^T``'s shape, as in
      :class:`~eqprop.network.DenseNetwork`);
    - ``biases``: ``{p: (C_p,)}`` of each conv population, ``{"out": (n_out,)}``;
    - ``readout``: the :class:`~eqprop.network.Readout` of ``out``;
    - static: ``shapes`` ``(("input", (H, W, C)), ("c1", (H1, W1, C1)), ..., ("out",
      (n_out,)))``, ``pools`` (one bool per conv population: whether its projection
      pools), ``tied``, ``activation``, ``temperature`` (of the softmax pooling),
      ``compute_dtype`` (one of :data:`~eqprop.network.dense.COMPUTE_DTYPES`:
      ``"float32"`` computes in the parameters' dtype, no cast; ``"bfloat16"`` and
      ``"float16"`` are the dtype of the operands of the convolutions and matmuls of the
      relaxation, accumulated in the parameters' dtype (``preferred_element_type``); the
      transposed convolutions of the feedback, JAX's transpose rule having no
      accumulation type, round their output to ``compute_dtype``; states, parameters,
      the primitive's products and the readout keep the parameters' dtype).

    States and activities are dicts ``{"c1": (B, H1, W1, C1), ..., "out": (B, n_out)}``.
    """

    # field order = leaf order of checkpoints and of named_parameters: keep it
    readout: Readout
    output: str = eqx.field(static=True)
    weights: dict[str, Array]
    biases: dict[str, Array]
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = eqx.field(static=True)
    pools: tuple[bool, ...] = eqx.field(static=True)
    tied: bool = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    temperature: float = eqx.field(static=True)
    compute_dtype: str = eqx.field(static=True, default="float32")

    def __check_init__(self):
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype: must be one of {', '.join(map(repr, COMPUTE_DTYPES))}, "
                             f"got {self.compute_dtype!r}")

    # -- structure ---------------------------------------------------------------------

    @property
    def populations(self) -> dict[str, tuple[int, ...]]:
        """Shapes of one example of every population, input included."""
        return dict(self.shapes)

    @property
    def names(self) -> tuple[str, ...]:
        """The non-input populations in forward order (``c1, ..., cK, out``)."""
        return tuple(p for p, _ in self.shapes[1:])

    @property
    def holomorphic(self) -> bool:
        """Whether the activation accepts complex states."""
        return get_activation(self.activation).holomorphic

    @property
    def symmetric(self) -> bool:
        """True with tied feedback (an energy-based network)."""
        return self.tied

    @property
    def _dtype(self):
        return self.biases[self.output].dtype

    def _edges(self) -> list[tuple[str, str]]:
        order = (INPUT,) + self.names
        return list(zip(order[:-1], order[1:]))

    # -- the maps ------------------------------------------------------------------------

    def _cast(self, v: Array) -> Array:
        return v if self.compute_dtype == "float32" else v.astype(self.compute_dtype)

    @property
    def _precision(self):
        """float32 products at float32 (:data:`~eqprop.network.ops.PRECISION`); the
        mixed-precision ones at their compute dtype's."""
        return PRECISION if self.compute_dtype == "float32" else None

    def _conv_real(self, a: Array, k: Array) -> Array:
        return lax.conv_general_dilated(self._cast(a), self._cast(k), (1, 1), "SAME",
                                        dimension_numbers=_DIMS, precision=self._precision,
                                        preferred_element_type=self._dtype)

    def _conv(self, a: Array, k: Array) -> Array:
        """``conv(a, k)``, ``SAME``; complex ``a`` as two real convolutions."""
        if jnp.iscomplexobj(a):
            return lax.complex(self._conv_real(a.real, k), self._conv_real(a.imag, k))
        return self._conv_real(a, k)

    def _conv_transpose(self, g: Array, k: Array, shape: tuple[int, ...]) -> Array:
        """The adjoint of ``a -> conv(a, k)`` applied to ``g`` (``jax.linear_transpose``
        of the convolution, in the compute dtype); complex ``g`` part by part."""
        dt = self._dtype if self.compute_dtype == "float32" else jnp.dtype(self.compute_dtype)
        # the same convolution with the kernel stored HWOI: its transpose then reaches XLA
        # as an HWIO convolution, which runs about 6x faster on CPU than the HWOI one the
        # HWIO form transposes to (645 -> 232 ms per fmnist-cnn-hep step, same weights)
        kc = k.astype(dt).transpose(0, 1, 3, 2)
        conv = lambda a: lax.conv_general_dilated(a, kc, (1, 1), "SAME",  # noqa: E731
                                                  dimension_numbers=_DIMS_OI,
                                                  precision=self._precision)
        adjoint = jax.linear_transpose(conv, jax.ShapeDtypeStruct(g.shape[:-3] + shape, dt))

        def real(v):
            return adjoint(v.astype(dt))[0].astype(self._dtype)

        if jnp.iscomplexobj(g):
            return lax.complex(real(g.real), real(g.imag))
        return real(g)

    def _matmul(self, a: Array, w: Array) -> Array:
        """``a @ w`` over the last axis, in the compute dtype; complex ``a`` as two real
        products."""

        def real(v):
            return lax.dot_general(self._cast(v), self._cast(w), (((v.ndim - 1,), (0,)), ((), ())),
                                   precision=self._precision, preferred_element_type=self._dtype)

        if jnp.iscomplexobj(a):
            return lax.complex(real(a.real), real(a.imag))
        return real(a)

    def _pool(self, i: int):
        if not self.pools[i]:
            return lambda z: z
        return lambda z: softmax_pool(z, self.temperature)

    def forward_map(self, src: str, dst: str, a_src: Array, kernel: Array | None = None) -> Array:
        """``f_dst(a_src)``: ``pool(conv(a_src, W) + b_dst)`` into a conv population,
        ``flatten(a_src) W + b_out`` into ``out``.

        **Arguments:** ``src``, ``dst``: consecutive populations (``src`` may be the
        input); ``a_src``: ``(B, H, W, C)`` activities (or the input), real or complex;
        ``kernel``: the kernel to use instead of ``W_{src->dst}`` (an untied feedback
        kernel, whose VJP is the feedback).

        **Returns:** ``(B, H', W', C')`` or ``(B, n_out)``.
        """
        k = self.weights[f"{src}->{dst}"] if kernel is None else kernel
        if dst == self.output:
            return self._matmul(a_src.reshape(*a_src.shape[:-3], -1), k) + self.biases[dst]
        i = self.names.index(dst)
        return self._pool(i)(self._conv(a_src, k) + self.biases[dst])

    def _feedback(self, src: str, dst: str, a_src: Array, a_dst: Array, drive: ConvDrive,
                  need_forward: bool) -> tuple[Array | None, Array]:
        """``(f_dst(a_src) or None, (df/da_src)^T a_dst)`` for one internal projection,
        sharing the forward convolution when the feedback is tied."""
        shape = self.populations[src]
        if dst == self.output:
            fwd = self.forward_map(src, dst, a_src) if need_forward else None
            b = drive.transposed if self.tied else self.weights[f"{dst}->{src}"]
            return fwd, self._matmul(a_dst, b).reshape(*a_dst.shape[:-1], *shape)
        i = self.names.index(dst)
        pool = self._pool(i)
        if self.tied:
            pooled, pool_vjp = jax.vjp(pool, self._conv(a_src, self.weights[f"{src}->{dst}"])
                                       + self.biases[dst])
            k = self.weights[f"{src}->{dst}"]
        else:
            pooled = self.forward_map(src, dst, a_src) if need_forward else None
            k = self.weights[f"{dst}->{src}"]
            _, pool_vjp = jax.vjp(pool, self._conv(a_src, k) + self.biases[dst])
        (g,) = pool_vjp(a_dst)
        return (pooled if need_forward else None), self._conv_transpose(g, k, shape)

    # -- dynamics ----------------------------------------------------------------------

    def _image(self, x: Array) -> Array:
        return input_batch(x, self.populations[INPUT], type(self).__name__).astype(self._dtype)

    def prepare(self, x: Array) -> ConvDrive:
        """The :class:`ConvDrive` of a batch.

        **Arguments:** ``x``: images ``(B, H, W, C)``, one-channel ``(B, H, W)``, or flattened
        ``(B, H W C)``, cast
        to the parameters' dtype.

        **Returns:** ``ConvDrive(inputs={"c1": (B, H1, W1, C1)}, transposed=(n_out,
        n_flat) or None)``.
        """
        x = self._image(x)
        first = self.names[0]
        inputs = {first: self.forward_map(INPUT, first, x)}
        transposed = None
        if self.tied:
            transposed = self._cast(jnp.transpose(self.weights[f"{self.names[-2]}->{self.output}"]))
        return ConvDrive(inputs=inputs, transposed=transposed)

    def init_state(self, drive: ConvDrive) -> dict[str, Array]:
        """Zeros ``{p: (B, *shape_p)}`` (the dtype of the drive)."""
        ref = drive.inputs[self.names[0]]
        batch = ref.shape[:-3]
        return {p: jnp.zeros(batch + self.populations[p], ref.dtype) for p in self.names}

    def activity(self, u: dict[str, Array]) -> dict[str, Array]:
        """``{p: act(u[p])}`` with the network's activation (shapes unchanged)."""
        act = get_activation(self.activation)
        return {p: act(v) for p, v in u.items()}

    def interaction(self, a: dict[str, Array], drive: ConvDrive,
                    targets: tuple[str, ...] | None = None) -> dict[str, Array]:
        """``h(a)``: every forward map into a population plus the feedback (VJP) from the
        next one (``h = dPhi/da`` when tied).

        **Arguments:** ``a``: activities ``{p: (B, ...)}``, real or complex; ``drive``:
        :meth:`prepare` of the batch; ``targets``: populations to compute ``h`` for
        (default: all).

        **Returns:** ``{p: (B, ...)}`` for ``p`` in ``targets``.
        """
        targets = self.names if targets is None else tuple(targets)
        h: dict[str, Array] = {p: drive.inputs[p] for p in targets if p in drive.inputs}

        def add(p, v):
            h[p] = v if p not in h else h[p] + v

        for src, dst in self._edges():
            if src == INPUT:
                continue
            if src in targets:
                fwd, fb = self._feedback(src, dst, a[src], a[dst], drive, dst in targets)
                add(src, fb)
                if fwd is not None:
                    add(dst, fwd)
            elif dst in targets:
                add(dst, self.forward_map(src, dst, a[src]))
        return {p: h[p] for p in targets}

    def field(self, u: dict[str, Array], drive: ConvDrive) -> dict[str, Array]:
        """``F_p(u) = h_p(act(u)) - u_p`` for every population, ``{p: (B, ...)}``."""
        h = self.interaction(self.activity(u), drive)
        return {p: h[p] - u[p] for p in u}

    def field_on(self, u: dict[str, Array], drive: ConvDrive, group: tuple[str, ...]) -> dict[str, Array]:
        """``F_p(u)`` for the populations ``p`` in ``group`` only."""
        h = self.interaction(self.activity(u), drive, targets=group)
        return {p: h[p] - u[p] for p in group}

    def feedforward(self, drive: ConvDrive) -> dict[str, Array]:
        """One forward pass: ``u_c1 = f_c1(x)``, ``u_p = f_p(act(u_{p-1}))``, no feedback.

        **Arguments:** ``drive``: :meth:`prepare` of the batch.

        **Returns:** ``{p: (B, ...)}``, a state like :meth:`init_state`'s.
        """
        act = get_activation(self.activation)
        first = self.names[0]
        u = {first: drive.inputs[first]}
        for src, dst in self._edges()[1:]:
            u[dst] = self.forward_map(src, dst, act(u[src]))
        return u

    def pooled_projections(self) -> list[tuple[str, str]]:
        """The internal projections ``(src, dst)`` that pool (softmax pooling into ``dst``),
        in chain order: the ones whose feedback depends on ``a_src`` through the pooling's
        Jacobian (the input's drive and the dense output's projection are not among them)."""
        return [(src, dst) for src, dst in self._edges()
                if src != INPUT and dst != self.output and self.pools[self.names.index(dst)]]

    def partition(self) -> tuple[tuple[str, ...], ...] | None:
        """Even and odd populations of the chain ``c1, ..., cK, out``: no population of a
        group is coupled to another of its group. Where a projection pools, the feedback
        through the softmax pooling also depends on the receiving population's own
        activity (the pooling's Jacobian is taken at ``conv(a_src)``), so an alternating
        sweep takes that self-dependence at the population's state before its update
        (block Gauss-Seidel, Jacobi inside a block); its fixed points are the synchronous
        iteration's. Measured on a trained Fashion-MNIST CNN (docs/conv.md), where the
        synchronous update ends in a 2-cycle, the alternating sweep settles.

        The order of the two groups in a sweep: a tied pooled projection ``src -> dst``
        evaluates ``conv(a_src)`` both for ``dst``'s drive and for the pooling's Jacobian
        in ``src``'s feedback; when ``dst``'s group is updated first, ``a_src`` is the same
        in both and XLA computes the convolution once (measured on the Fashion-MNIST CNN,
        batch 50, 100 group updates: the loop body has 5 convolutions instead of 6 and
        the free phase takes 0.72x the time). The group holding the ``dst`` of most such
        projections goes first (the even group on a tie, and always when untied)."""
        even, odd = self.names[0::2], self.names[1::2]
        if not self.tied:
            return even, odd
        pooled = [src for src, _ in self.pooled_projections()]
        odd_first = sum(src in even for src in pooled) > sum(src in odd for src in pooled)
        return (odd, even) if odd_first else (even, odd)

    def feedback_pairs(self) -> dict[str, tuple[Array, Array | None]]:
        """``{"<src>-<dst>": (W, B)}`` for every internal projection: ``B = None`` when
        tied. Untied: the dense pair as :class:`~eqprop.network.DenseNetwork`'s (``B``
        ``(n_out, n_flat)``, compared with ``W`` as ``B^T``); for a conv pair ``B`` is the
        feedback kernel with its axes reversed (``jnp.transpose``), so that ``B^T`` is
        the kernel itself, compared with the forward kernel ``W`` of the same shape (the
        feedback is the VJP of the conv with that kernel: the angle between the two
        kernels is the angle between the two operators, up to the border)."""
        out: dict[str, tuple[Array, Array | None]] = {}
        for src, dst in self._edges():
            if src == INPUT:
                continue
            w = self.weights[f"{src}->{dst}"]
            if self.tied:
                out[f"{src}-{dst}"] = (w, None)
            else:
                b = self.weights[f"{dst}->{src}"]
                out[f"{src}-{dst}"] = (w, b if dst == self.output else jnp.transpose(b))
        return out

    def primitive(self, a: dict[str, Array], x: Array) -> Array:
        """``Phi(a) = sum_p < f_p(a_{p-1}), a_p >`` per example (tied only; ``a_0 = x``).

        ``dPhi/da = h(a)`` (:meth:`interaction`); classic EP (Scellier and Bengio 2017)
        contrasts ``dPhi/dtheta`` at two fixed points.

        **Arguments:** ``a``: activities ``{p: (B, ...)}``; ``x``: images ``(B, H, W, C)``.

        **Returns:** ``(B,)``.

        **Raises:** ``ValueError`` with untied feedback.
        """
        if not self.symmetric:
            raise ValueError("the primitive (energy) exists for tied networks only")
        src = dict(a, **{INPUT: self._image(x)})
        phi = 0.0
        for s, d in self._edges():
            prod = self.forward_map(s, d, src[s]) * a[d]
            phi = phi + jnp.sum(prod.reshape(prod.shape[0], -1), axis=-1)
        return phi


# -- constructor -----------------------------------------------------------------------


def conv_shapes(input_shape: Sequence[int], channels: Sequence[int],
                pools: Sequence[bool]) -> list[tuple[int, int, int]]:
    """The ``(H, W, C)`` of each conv population.

    **Raises:** ``ValueError`` (starting ``pool:``) when a pooling would leave less than
    one pixel.
    """
    h, w, _ = input_shape
    out = []
    for i, (c, p) in enumerate(zip(channels, pools)):
        if p:
            if h < 2 or w < 2:
                raise ValueError(f"pool: conv population c{i + 1} would pool a {h}x{w} map to "
                                 f"less than one pixel; pool fewer layers or use larger inputs")
            h, w = pooled_size(h), pooled_size(w)
        out.append((h, w, c))
    return out


def convnet(
    input_shape: Sequence[int],
    channels: Sequence[int],
    *,
    n_classes: int,
    key: Array,
    pool: Sequence[bool] | None = None,
    output_size: int = 64,
    feedback: str = "tied",
    asymmetry_angle: float = 0.0,
    activation: str = "dsilu",
    readout: str = "softmax",
    dtype=jnp.float32,
    init_scale: float = 1.0,
    temperature: float = 1.0,
    compute_dtype: str = "float32",
) -> ConvNetwork:
    """A convolutional equilibrium network ``input -> c1 -> ... -> cK -> out -> readout``.

    Initialisation: a conv kernel uniform in ``+-init_scale / sqrt(9 C_src)``, the dense
    matrix in ``+-init_scale / sqrt(n_flat)`` (PyTorch's defaults for ``init_scale = 1``),
    biases zero (the authors' Flax default). Untied feedback ``B = sin(alpha) R +
    cos(alpha) W`` with ``R`` a random draw orthogonalised against ``W`` and scaled to its
    norm (:func:`~eqprop.network.dense.feedback_at_angle`, on the kernels): the angle
    between ``B`` and ``W`` is exactly ``alpha`` (Laborieux and Zenke 2024, arXiv
    2309.02214).

    **Arguments:**

    - ``input_shape``: ``(H, W, C)`` of one image (``(H, W)`` means one channel);
    - ``channels``: ``(C1, ..., CK)``, channels of the conv populations (``K >= 1``);
    - ``n_classes``: classes of the readout; ``key``: PRNG key of the initialisation;
    - ``pool``: one bool per conv population, whether its projection pools 2x2 (default:
      all);
    - ``output_size``: units of the dense output population;
    - ``feedback``: ``"tied"`` or ``"untied"``; ``asymmetry_angle``: ``alpha`` in degrees
      (untied only);
    - ``activation``, ``readout``: registered names; ``dtype``: of every parameter (the
      states follow it); ``init_scale``: scale of the kernels' bound;
    - ``temperature``: of the softmax pooling; ``compute_dtype``: ``"float32"`` (no
      cast), ``"bfloat16"`` or ``"float16"``: the operands of the relaxation's
      convolutions and matmuls (mixed precision, see :class:`ConvNetwork`).

    **Returns:** the :class:`ConvNetwork`.

    **Raises:** ``ValueError``, its message starting with the setting at fault
    (``channels:``, ``pool:``, ``feedback:``, ``readout:``...): no channel, a ``pool`` of
    another length, a pooling below one pixel, an input that is not an image, an unknown
    feedback, activation or readout, or a readout that does not fit.
    """
    if feedback not in ("tied", "untied"):
        raise ValueError(f"feedback: must be 'tied' or 'untied', got {feedback!r}")
    get_activation(activation)
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) == 2:
        input_shape = input_shape + (1,)
    if len(input_shape) != 3:
        raise ValueError(f"kind: 'conv' needs images (H, W, C), the data's examples have shape "
                         f"{input_shape}")
    channels = tuple(int(c) for c in channels)
    if not channels:
        raise ValueError("channels: needs at least one conv population")
    pools = tuple(bool(p) for p in (pool if pool is not None else (True,) * len(channels)))
    if len(pools) != len(channels):
        raise ValueError(f"pool: one entry per conv population ({len(channels)}), got {len(pools)}")
    maps = conv_shapes(input_shape, channels, pools)
    names = [f"c{i + 1}" for i in range(len(channels))]
    n_flat = int(math.prod(maps[-1]))
    shapes = ((INPUT, input_shape), *zip(names, maps), (OUTPUT, (output_size,)))

    keys = iter(jax.random.split(key, 2 * len(channels) + 4))
    weights: dict[str, Array] = {}
    in_c = input_shape[-1]
    order = [INPUT] + names
    for i, c in enumerate(channels):
        bound = init_scale / math.sqrt(KERNEL * KERNEL * in_c)
        weights[f"{order[i]}->{names[i]}"] = jax.random.uniform(
            next(keys), (KERNEL, KERNEL, in_c, c), dtype, -bound, bound)
        in_c = c
    bound = init_scale / math.sqrt(n_flat)
    weights[f"{names[-1]}->{OUTPUT}"] = jax.random.uniform(next(keys), (n_flat, output_size),
                                                           dtype, -bound, bound)
    if feedback == "untied":
        alpha = asymmetry_angle * (math.pi / 180)
        for src, dst in zip(names, names[1:] + [OUTPUT]):
            w = weights[f"{src}->{dst}"]
            wt = w if dst != OUTPUT else w.T
            draw = jax.random.uniform(next(keys), wt.shape, dtype, -1.0, 1.0)
            weights[f"{dst}->{src}"] = feedback_at_angle(wt, draw, alpha)
    biases = {p: jnp.zeros((m[-1],), dtype) for p, m in zip(names, maps)}
    biases[OUTPUT] = jnp.zeros((output_size,), dtype)
    try:
        head = make_readout(readout, output_size, n_classes, key=next(keys), dtype=dtype)
    except ValueError as err:
        raise ValueError(f"readout: {err}") from None
    return ConvNetwork(
        readout=head, output=OUTPUT, weights=weights, biases=biases, shapes=shapes,
        pools=pools, tied=feedback == "tied", activation=activation,
        temperature=float(temperature), compute_dtype=compute_dtype,
    )
