"""Dense equilibrium networks: named populations coupled by dense projections.

State ``u[p]``: ``(B, n_p)`` pre-activations; activity ``a[p] = act(u[p])``.
Drive ``h_p = b_p + sum_{e: src -> p} a_src @ W_e + sum_{tied e: p -> dst} a_dst @ W_e^T``
(the input ``x`` is a clamped source; its contribution is hoisted into ``prepare``).
Vector field ``F_p(u) = h_p(a) - u_p``.

Mixed precision (``compute_dtype``, arXiv 2209.00530 trains its CNN so on a GPU): the
products ``a @ W`` of the drive, the interaction and the forward pass take their operands
in ``compute_dtype`` (``bfloat16``, ``float16``) and accumulate in the parameters' dtype
(``preferred_element_type``); states, parameters and gradients keep that dtype.

A *tied* projection ``src -> dst`` is one symmetric coupling: ``dst`` also drives ``src``
through ``W^T`` (energy-based network). An *untied* projection acts one way only;
feedback is its own projection with its own matrix.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from ..activations import get_activation
from ..registry import READOUTS
from .base import (BipartiteModel, EnergyModel, FeedbackModel, FeedForwardModel, InteractionModel,
                   MixedPrecisionModel)
from .ops import input_batch, matmul
from .readout import Readout, make_readout

INPUT = "input"

#: ``compute_dtype`` values: the dtype of the operands of the relaxation's products
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def mixed_matmul(a: Array, w: Array, compute: str) -> Array:
    """``a @ w`` with both operands in ``compute`` and the products accumulated in the
    dtype of ``a`` (the states': float32); ``compute = "float32"`` is
    :func:`~eqprop.network.ops.matmul` unchanged (no cast, whatever the dtype of ``a``).
    Complex ``a`` stays two real products.

    **Arguments:** ``a``: ``(..., n_in)``, real or complex; ``w``: ``(n_in, n_out)``, real
    (already in ``compute`` or not); ``compute``: one of :data:`COMPUTE_DTYPES`.

    **Returns:** ``(..., n_out)``, the (real or complex) dtype of ``a``.
    """
    if compute == "float32":
        return matmul(a, w)
    acc, wc = a.real.dtype, w.astype(compute)

    def dot(v):
        return jnp.dot(v.astype(compute), wc, preferred_element_type=acc)

    if jnp.iscomplexobj(a):
        return jax.lax.complex(dot(a.real), dot(a.imag))
    return dot(a)


class Projection(NamedTuple):
    """A projection ``src -> dst``; ``tied`` makes it a symmetric coupling."""

    src: str
    dst: str
    tied: bool

    @property
    def name(self) -> str:
        """``"<src>-><dst>"``, the key of its matrix in ``DenseNetwork.weights``."""
        return f"{self.src}->{self.dst}"


class DenseDrive(eqx.Module):
    """What a dense network hoists out of the relaxation loop for a batch.

    ``inputs[p]``: ``b_p + sum_{e: input -> p} x @ W_e``, ``(B, n_p)``.
    ``transposed[e]``: ``W_e^T`` of each tied internal projection, materialised once
    outside the loop (a transposed operand inside it is slower), in the network's
    ``compute_dtype``.
    ``weights[e]``: each internal projection's ``W_e`` cast to ``compute_dtype`` once
    outside the loop (empty when ``compute_dtype = "float32"``: the parameters are used).
    """

    inputs: dict[str, Array]
    transposed: dict[str, Array]
    weights: dict[str, Array] = eqx.field(default_factory=dict)


class DenseNetwork(InteractionModel, EnergyModel, BipartiteModel, FeedbackModel, FeedForwardModel,
                   MixedPrecisionModel):
    """Dense network over named populations; parameters ``weights``, ``biases``, ``readout``.

    Build one with :func:`graph` or :func:`layered`.

    **Fields:**

    - ``weights``: ``{e.name: (n_src, n_dst)}``, one matrix per projection (a tied
      projection's matrix also carries the feedback, as ``W^T``);
    - ``biases``: ``{p: (n_p,)}`` for every population but the input;
    - ``readout``: the :class:`~eqprop.network.Readout` of the output population;
    - ``sizes`` (static): ``((name, n), ...)``, the input first;
    - ``projections`` (static): the :class:`Projection` list;
    - ``output`` (static): the nudged population; ``activation`` (static): a registered
      activation name;
    - ``compute_dtype`` (static): the dtype of the operands of the products ``a @ W`` of
      the drive, the interaction and the forward pass, one of :data:`COMPUTE_DTYPES`
      (``"float32"``: no cast; ``"bfloat16"``/``"float16"``: mixed precision, the
      products accumulated in the states' dtype; the energy :meth:`primitive` and the
      readout stay in the parameters' dtype).

    States and activities are dicts ``{p: (B, n_p)}`` over the non-input populations.
    """

    # field order = leaf order of checkpoints and of named_parameters: keep it
    readout: Readout
    output: str = eqx.field(static=True)
    weights: dict[str, Array]
    biases: dict[str, Array]
    sizes: tuple[tuple[str, int], ...] = eqx.field(static=True)
    projections: tuple[Projection, ...] = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    compute_dtype: str = eqx.field(static=True, default="float32")

    def __check_init__(self):
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {', '.join(map(repr, COMPUTE_DTYPES))}, "
                             f"got {self.compute_dtype!r}")

    # -- structure ---------------------------------------------------------------------

    @property
    def populations(self) -> dict[str, int]:
        """Population sizes, input included (``{"input": n_in, "h1": ..., ...}``)."""
        return dict(self.sizes)

    @property
    def holomorphic(self) -> bool:
        """Whether the activation accepts complex states."""
        return get_activation(self.activation).holomorphic

    @property
    def symmetric(self) -> bool:
        """True when every projection is tied (an energy-based network)."""
        return all(p.tied for p in self.projections)

    # -- dynamics ----------------------------------------------------------------------

    def _input(self, x: Array) -> Array:
        """``x`` ``(B, ...)`` flattened to ``(B, n_in)`` in the parameters' dtype
        (:func:`~eqprop.network.ops.input_batch`: a wrong size is a one-line error)."""
        return input_batch(x, (self.populations[INPUT],), type(self).__name__,
                           any_layout=True).astype(self.biases[self.output].dtype)

    def prepare(self, x: Array) -> DenseDrive:
        """The :class:`DenseDrive` of a batch.

        **Arguments:** ``x``: inputs ``(B, ...)``, flattened to ``(B, n_in)`` and cast to
        the parameters' dtype.

        **Returns:** ``DenseDrive(inputs={p: (B, n_p)}, transposed={e.name: (n_dst,
        n_src)}, weights={e.name: (n_src, n_dst)})`` (``weights``: empty in float32
        compute).
        """
        x = self._input(x)
        drive = {p: jnp.broadcast_to(b, (x.shape[0],) + b.shape) for p, b in self.biases.items()}
        for e in self.projections:
            if e.src == INPUT:
                drive[e.dst] = drive[e.dst] + mixed_matmul(x, self.weights[e.name], self.compute_dtype)
        internal = [e for e in self.projections if e.src != INPUT]
        cast = (dict if self.compute_dtype == "float32" else
                lambda ws: {k: w.astype(self.compute_dtype) for k, w in ws.items()})
        transposed = cast({e.name: jnp.transpose(self.weights[e.name]) for e in internal if e.tied})
        weights = {} if self.compute_dtype == "float32" else cast(
            {e.name: self.weights[e.name] for e in internal})
        return DenseDrive(inputs=drive, transposed=transposed, weights=weights)

    def init_state(self, drive: DenseDrive) -> dict[str, Array]:
        """Zeros ``{p: (B, n_p)}`` (the dtype of the drive)."""
        return {p: jnp.zeros_like(d) for p, d in drive.inputs.items()}

    def activity(self, u: dict[str, Array]) -> dict[str, Array]:
        """``{p: act(u[p])}`` with the network's activation (shapes unchanged)."""
        act = get_activation(self.activation)
        return {p: act(v) for p, v in u.items()}

    def interaction(
        self, a: dict[str, Array], drive: DenseDrive, targets: tuple[str, ...] | None = None
    ) -> dict[str, Array]:
        """``h(a)``: the prepared input drive plus every internal projection.

        **Arguments:** ``a``: activities ``{p: (B, n_p)}`` (or ``(P, B, n_p)``), real or
        complex; ``drive``: :meth:`prepare` of the batch; ``targets``: population names
        to compute ``h`` for (default: all).

        **Returns:** ``{p: (B, n_p)}`` for ``p`` in ``targets``.
        """
        h = dict(drive.inputs) if targets is None else {p: drive.inputs[p] for p in targets}
        for e in self.projections:
            if e.src == INPUT:
                continue
            if e.dst in h:
                h[e.dst] = h[e.dst] + self._product(a[e.src], e, drive)
            if e.tied and e.src in h:
                h[e.src] = h[e.src] + mixed_matmul(a[e.dst], drive.transposed[e.name], self.compute_dtype)
        return h

    def _product(self, a: Array, e: Projection, drive: DenseDrive) -> Array:
        """``a @ W_e`` in ``compute_dtype`` (the drive's cast copy of ``W_e`` when there is one)."""
        return mixed_matmul(a, drive.weights.get(e.name, self.weights[e.name]), self.compute_dtype)

    def field(self, u: dict[str, Array], drive: DenseDrive) -> dict[str, Array]:
        """``F_p(u) = h_p(act(u)) - u_p`` for every population in ``u``, ``{p: (B, n_p)}``."""
        h = self.interaction(self.activity(u), drive)
        return {p: h[p] - u[p] for p in u}

    def field_on(self, u: dict[str, Array], drive: DenseDrive, group: tuple[str, ...]) -> dict[str, Array]:
        """``F_p(u)`` for the populations ``p`` in ``group`` only (``h`` computed for those)."""
        h = self.interaction(self.activity(u), drive, targets=group)
        return {p: h[p] - u[p] for p in group}

    def partition(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """Two groups of populations with no coupling inside either, from a 2-colouring
        of the coupling graph of the non-input populations (a projection couples its two
        ends, tied or not).

        **Returns:** ``(group_0, group_1)`` of population names, or ``(group_0,)`` when
        no population is coupled to another (one hidden layer: the whole update is one
        group, and the alternating sweep is the synchronous step), or ``None`` when an
        odd cycle (e.g. a skip over one layer) makes the graph non-bipartite.
        """
        pops = [p for p, _ in self.sizes if p != INPUT]
        nbrs: dict[str, set[str]] = {p: set() for p in pops}
        for e in self.projections:
            if e.src != INPUT:
                nbrs[e.src].add(e.dst)
                nbrs[e.dst].add(e.src)
        colour: dict[str, int] = {}
        for start in pops:
            if start in colour:
                continue
            colour[start], queue = 0, [start]
            while queue:
                p = queue.pop()
                for q in nbrs[p]:
                    if q not in colour:
                        colour[q] = 1 - colour[p]
                        queue.append(q)
                    elif colour[q] == colour[p]:
                        return None
        groups = tuple(tuple(p for p in pops if colour[p] == c) for c in (0, 1))
        return tuple(g for g in groups if g)

    # -- the feed-forward counterpart (the bp baseline) ------------------------------

    def forward_projections(self) -> tuple[Projection, ...]:
        """The projections of the forward graph: every tied projection in its listed
        direction, and every untied one but a *feedback* projection ``b -> a`` listed after
        ``a -> b`` (the pairs :func:`graph` initialises at the asymmetry angle)."""
        seen: set[tuple[str, str]] = set()
        out = []
        for e in self.projections:
            if e.tied or (e.dst, e.src) not in seen:
                out.append(e)
            seen.add((e.src, e.dst))
        return tuple(out)

    def forward_order(self) -> tuple[str, ...]:
        """The non-input populations in a topological order of the forward graph
        (:meth:`forward_projections`), ties in the order of ``sizes``.

        **Raises:** ``ValueError`` (one line naming a cycle) when the forward graph has one.
        """
        pops = [p for p, _ in self.sizes if p != INPUT]
        preds = {p: {e.src for e in self.forward_projections() if e.dst == p and e.src != INPUT}
                 for p in pops}
        order: list[str] = []
        while len(order) < len(pops):
            ready = [p for p in pops if p not in order and preds[p] <= set(order)]
            if not ready:
                raise ValueError("the forward projections form a cycle (" + _cycle(
                    {p: preds[p] - set(order) for p in pops if p not in order}) + "); in "
                    "model.projections an untied feedback projection [b, a] counts as feedback only "
                    "when listed after its forward one [a, b]")
            order.append(ready[0])
        return tuple(order)

    def check_feedforward(self) -> None:
        """``ValueError`` when the forward graph has a cycle (:meth:`forward_order`)."""
        self.forward_order()

    def feedforward(self, drive: DenseDrive) -> dict[str, Array]:
        """One forward pass, no feedback: in :meth:`forward_order`, ``u_p = b_p + x W_{in
        -> p} + sum_{forward e: q -> p} act(u_q) W_e`` (the forward projections of
        :meth:`forward_projections`; products in ``compute_dtype``). For a layered network
        ``u_1 = x W_1 + b_1``, ``u_l = act(u_{l-1}) W_l + b_l``: an MLP with the same
        weights (compared with BP by Laborieux and Zenke 2022, arXiv 2209.00530). It is
        the free fixed point of the network with its feedback removed.

        **Arguments:** ``drive``: :meth:`prepare` of the batch.

        **Returns:** the state ``{p: (B, n_p)}``, the drive's dtype.

        **Raises:** ``ValueError`` when the forward graph has a cycle.
        """
        act = get_activation(self.activation)
        u: dict[str, Array] = {}
        a: dict[str, Array] = {}
        fwd = self.forward_projections()
        for p in self.forward_order():
            u[p] = drive.inputs[p]
            for e in fwd:
                if e.dst == p and e.src != INPUT:
                    u[p] = u[p] + self._product(a[e.src], e, drive)
            a[p] = act(u[p])
        return {p: u[p] for p, _ in self.sizes if p != INPUT}

    def feedback_pairs(self) -> dict[str, tuple[Array, Array | None]]:
        """Pairs of non-input populations coupled both ways, named ``"<src>-<dst>"`` after
        the projection listed first.

        **Returns:** ``{"<src>-<dst>": (W, B)}`` with ``W = weights["<src>-><dst>"]``
        ``(n_src, n_dst)`` and ``B = weights["<dst>-><src>"]`` ``(n_dst, n_src)``, or
        ``B = None`` for a tied projection.
        """
        names = {p.name for p in self.projections}
        out: dict[str, tuple[Array, Array | None]] = {}
        done: set[frozenset[str]] = set()
        for e in self.projections:
            pair = frozenset((e.src, e.dst))
            if INPUT in pair or pair in done:
                continue
            if e.tied:
                out[f"{e.src}-{e.dst}"] = (self.weights[e.name], None)
                done.add(pair)
            elif f"{e.dst}->{e.src}" in names:
                out[f"{e.src}-{e.dst}"] = (self.weights[e.name], self.weights[f"{e.dst}->{e.src}"])
                done.add(pair)
        return out

    def primitive(self, a: dict[str, Array], x: Array) -> Array:
        """``Phi(a) = sum_e a_src W_e a_dst + sum_p b_p a_p`` per example (tied only).

        ``dPhi/da = h(a)`` (the sum runs over every projection, those from the input
        included, with ``a_input = x``); classic EP (Scellier and Bengio 2017) contrasts
        ``dPhi/dtheta`` at two fixed points.

        **Arguments:** ``a``: activities ``{p: (B, n_p)}``; ``x``: inputs ``(B, ...)``.

        **Returns:** ``(B,)``.

        **Raises:** ``ValueError`` when a projection is untied.
        """
        if not self.symmetric:
            raise ValueError("the primitive (energy) exists for tied networks only")
        x = self._input(x)
        src = dict(a, **{INPUT: x})
        phi = sum(jnp.sum(a[p] * b, axis=-1) for p, b in self.biases.items())
        for e in self.projections:
            phi = phi + jnp.sum(matmul(src[e.src], self.weights[e.name]) * a[e.dst], axis=-1)
        return phi


def _cycle(preds: dict[str, set[str]]) -> str:
    """A cycle of a graph in which every node has a predecessor: ``"a -> b -> a"``."""
    p = next(iter(preds))
    path = [p]
    while True:
        p = sorted(preds[p])[0]
        if p in path:
            cycle = path[path.index(p):][::-1]
            return " -> ".join(cycle + [cycle[0]])
        path.append(p)


# -- constructors ----------------------------------------------------------------------


def _uniform(key: Array, shape: tuple[int, ...], bound: float, dtype) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def feedback_at_angle(wt: Array, draw: Array, alpha: float) -> Array:
    """A feedback matrix at exactly the angle ``alpha`` from ``wt = W^T``.

    ``B = sin(alpha) R + cos(alpha) W^T``, where ``R`` is ``draw`` minus its projection on
    ``W^T`` (Frobenius inner product), rescaled to ``||W||``. Then ``<R, W^T> = 0`` and
    ``||R|| = ||W^T||``, so ``cos angle(B, W^T) = cos(alpha)`` exactly and ``||B|| =
    ||W||`` (Laborieux and Zenke 2024, arXiv 2309.02214, whose ``B_init`` is only
    approximately orthogonal to ``W^T``: 60 degrees asked gave 58.9).

    **Arguments:** ``wt``: ``W^T``, ``(n_dst, n_src)`` of the feedback; ``draw``: a random
    matrix of the same shape (not parallel to ``wt``); ``alpha``: the angle in radians (a
    number or a traced scalar).

    **Returns:** ``B``, the shape and dtype of ``wt``.
    """
    norm = jnp.sqrt(jnp.sum(wt * wt))
    r = draw - (jnp.sum(draw * wt) / (norm * norm)) * wt
    r = r * (norm / jnp.sqrt(jnp.sum(r * r)))
    return jnp.sin(alpha) * r + jnp.cos(alpha) * wt


def graph(
    populations: dict[str, int],
    projections: Sequence[Sequence[str]],
    *,
    input_size: int,
    n_classes: int,
    key: Array,
    output: str = "out",
    feedback: str = "tied",
    asymmetry_angle: float = 0.0,
    activation: str = "sigmoid4",
    readout: str = "softmax",
    dtype=jnp.float32,
    init_scale: float = 1.0,
    compute_dtype: str = "float32",
) -> DenseNetwork:
    """A dense network from named populations and a list of projections.

    ``feedback="tied"``: each listed pair is one symmetric coupling. ``"untied"``: each
    pair acts one way; when both ``[a, b]`` and a later ``[b, a]`` are listed, the later
    (feedback) matrix is initialised as ``B = sin(alpha) R + cos(alpha) W^T``
    (controlled asymmetry of Laborieux and Zenke 2024, arXiv 2309.02214; ``alpha = 0``
    is symmetric, 90 independent), and both are then trained as separate parameters.
    ``R`` is a random draw ``B_init`` made orthogonal to ``W^T`` (Frobenius inner
    product) and rescaled to the norm of ``W``, so that the angle between ``B`` and
    ``W^T`` at initialisation is exactly ``alpha`` (to rounding) and ``||B|| = ||W||``
    (:func:`feedback_at_angle`).

    Initialisation: the weights of ``src -> dst`` uniform in
    ``+-init_scale / sqrt(n_src)`` (PyTorch's ``Linear`` default for ``init_scale = 1``);
    the bias of ``p`` uniform in ``+-1 / sqrt(fan_in_p)``, with ``fan_in_p`` the summed
    sizes of every population driving ``p`` (tied feedback included) and no
    ``init_scale``; the readout as in :func:`~eqprop.network.make_readout`.

    **Arguments:**

    - ``populations``: ``{name: size}`` of the non-input populations;
    - ``projections``: ``[[src, dst], ...]``; ``src`` may be ``"input"``;
    - ``input_size``: features per example (the flattened input, ``n_in``);
    - ``n_classes``: number of classes of the readout;
    - ``key``: PRNG key of the initialisation;
    - ``output``: the nudged population, read by the readout;
    - ``feedback``: ``"tied"`` or ``"untied"``;
    - ``asymmetry_angle``: ``alpha`` in degrees (used with untied feedback only);
    - ``activation``: a registered activation name;
    - ``readout``: a registered readout name (``"softmax"``, ``"mse"``);
    - ``dtype``: of every parameter (the states follow it);
    - ``init_scale``: scale of the weights' initialisation bound;
    - ``compute_dtype``: the operands' dtype of the relaxation's products
      (:data:`COMPUTE_DTYPES`; ``"float32"``: no cast).

    **Returns:** the :class:`DenseNetwork`.

    **Raises:** ``ValueError`` for an unknown ``feedback``, activation or readout, an
    ``output`` that is not a population, a projection with an unknown end, into the
    input, from a population to itself, or listed twice (with tied feedback ``[a, b]``
    and ``[b, a]`` are the same coupling), a readout that does not fit (``"mse"``
    needs ``populations[output] == n_classes``), or an unknown ``compute_dtype``.
    """
    if feedback not in ("tied", "untied"):
        raise ValueError(f"feedback must be 'tied' or 'untied', got {feedback!r}")
    get_activation(activation)
    sizes = {INPUT: input_size, **populations}
    if output not in populations:
        raise ValueError(f"output population {output!r} is not among {sorted(populations)}")
    projs: list[Projection] = []
    seen: set[frozenset[str] | tuple[str, str]] = set()
    for pair in projections:
        src, dst = pair
        for end in (src, dst):
            if end not in sizes:
                raise ValueError(f"projection {src}->{dst}: unknown population {end!r}")
        if dst == INPUT:
            raise ValueError(f"projection {src}->{dst}: the input is clamped, nothing projects into it")
        if src == dst:
            raise ValueError(f"projection {src}->{dst}: self-connections are not allowed")
        ident = frozenset((src, dst)) if feedback == "tied" else (src, dst)
        if ident in seen:
            raise ValueError(f"projection {src}->{dst} is listed twice" + (
                " (tied: it already couples both ways)" if feedback == "tied" else ""))
        seen.add(ident)
        projs.append(Projection(src, dst, feedback == "tied"))

    keys = iter(jax.random.split(key, len(projs) + len(populations) + 1))
    fan_in = {p: 0 for p in populations}
    for e in projs:
        fan_in[e.dst] += sizes[e.src]
        if e.tied and e.src != INPUT:
            fan_in[e.src] += sizes[e.dst]
    weights: dict[str, Array] = {}
    alpha = asymmetry_angle * (math.pi / 180)  # a number or a traced scalar
    for e in projs:
        bound = init_scale / math.sqrt(sizes[e.src])
        w = _uniform(next(keys), (sizes[e.src], sizes[e.dst]), bound, dtype)
        forward = weights.get(f"{e.dst}->{e.src}")
        if not e.tied and forward is not None and e.dst != INPUT:
            w = feedback_at_angle(forward.T, w, alpha)
        weights[e.name] = w
    biases = {
        p: _uniform(next(keys), (n,), 1.0 / math.sqrt(max(fan_in[p], 1)), dtype)
        for p, n in populations.items()
    }
    return DenseNetwork(
        weights=weights,
        biases=biases,
        readout=make_readout(readout, populations[output], n_classes, key=next(keys), dtype=dtype),
        sizes=tuple(sizes.items()),
        projections=tuple(projs),
        output=output,
        activation=activation,
        compute_dtype=compute_dtype,
    )


def layered(
    sizes: Sequence[int],
    *,
    key: Array,
    n_classes: int | None = None,
    feedback: str = "tied",
    readout: str = "softmax",
    **kwargs,
) -> DenseNetwork:
    """A layered network from ``sizes = [n_in, n_1, ..., n_last]``.

    - ``readout="softmax"``: ``n_1 .. n_{L-1}`` are hidden populations ``h1 .. h{L-1}``;
      the last hidden population is the output (the nudged one) and the trainable
      readout maps it to ``n_last`` classes (as in Laborieux et al.'s code: for
      784-256-256-10 the readout reads the second 256-unit layer). Needs ``len >= 3``.
    - any other readout (``"mse"``): ``n_1 .. n_{L-1}`` are ``h1 .. h{L-1}`` and ``n_last``
      is an output population ``out`` (for ``"mse"`` compared with the one-hot target).
      Needs ``len >= 2``.

    Forward projections join consecutive layers; with untied feedback the reverse
    projections run from the output back to ``h1`` (none into the input).

    **Arguments:** ``sizes``: as above; ``key``: PRNG key of the initialisation;
    ``n_classes``: when given, checked against ``sizes[-1]``; ``feedback``: ``"tied"`` or
    ``"untied"``; ``readout``: a registered readout name; ``**kwargs``: the other
    keywords of :func:`graph` (``asymmetry_angle``, ``activation``, ``dtype``,
    ``init_scale``, ``compute_dtype``).

    **Returns:** the :class:`DenseNetwork` (via :func:`graph`).

    **Raises:** ``ValueError`` for too few sizes, a last size that is not ``n_classes``
    (softmax) or the readout's output units for ``n_classes`` (``"binary"``: 1), or any
    error of :func:`graph`.
    """
    if readout == "softmax":
        if len(sizes) < 3:
            raise ValueError(
                f"a softmax readout needs sizes [input, hidden..., classes] with at least one hidden layer, got {list(sizes)}"
            )
        pop_sizes, classes = list(sizes[1:-1]), sizes[-1]
        names = [INPUT] + [f"h{i}" for i in range(1, len(pop_sizes) + 1)]
    else:
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least an input and an output size, got {list(sizes)}")
        pop_sizes, classes = list(sizes[1:]), sizes[-1] if n_classes is None else n_classes
        names = [INPUT] + [f"h{i}" for i in range(1, len(pop_sizes))] + ["out"]
        units = READOUTS.get(readout).output_units(classes)
        if sizes[-1] != units:
            raise ValueError(f"the last size {sizes[-1]} must be {units}, the output units of "
                             f"readout {readout!r} for {classes} classes")
    if n_classes is not None and n_classes != classes:
        raise ValueError(f"the last size {classes} must be the number of classes {n_classes}")
    pops = dict(zip(names[1:], pop_sizes))
    projs = [[names[i], names[i + 1]] for i in range(len(names) - 1)]
    if feedback == "untied":
        projs += [[names[i + 1], names[i]] for i in range(len(names) - 2, 0, -1)]
    return graph(
        pops,
        projs,
        input_size=sizes[0],
        n_classes=classes,
        key=key,
        output=names[-1],
        feedback=feedback,
        readout=readout,
        **kwargs,
    )
