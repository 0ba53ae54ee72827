"""Dense equilibrium networks: named populations coupled by dense projections.

State ``u[p]``: ``(B, n_p)`` pre-activations; activity ``a[p] = act(u[p])``.
Drive ``h_p = b_p + sum_{e: src -> p} a_src @ W_e + sum_{tied e: p -> dst} a_dst @ W_e^T``
(the input ``x`` is a clamped source; its contribution is hoisted into ``prepare``).
Vector field ``F_p(u) = h_p(a) - u_p``.

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
from .base import BipartiteModel, EnergyModel, FeedbackModel, InteractionModel
from .ops import matmul
from .readout import Readout, make_readout

INPUT = "input"


class Projection(NamedTuple):
    """A projection ``src -> dst``; ``tied`` makes it a symmetric coupling."""

    src: str
    dst: str
    tied: bool

    @property
    def name(self) -> str:
        return f"{self.src}->{self.dst}"


class DenseDrive(eqx.Module):
    """What a dense network hoists out of the relaxation loop for a batch.

    ``inputs[p]``: ``b_p + sum_{e: input -> p} x @ W_e``, ``(B, n_p)``.
    ``transposed[e]``: ``W_e^T`` of each tied internal projection, materialised once
    outside the loop (a transposed operand inside it is slower).
    """

    inputs: dict[str, Array]
    transposed: dict[str, Array]


class DenseNetwork(InteractionModel, EnergyModel, BipartiteModel, FeedbackModel):
    """Dense network over named populations; parameters ``weights``, ``biases``, ``readout``.

    ``weights[e.name]`` has shape ``(n_src, n_dst)``; ``biases[p]`` has shape ``(n_p,)``.
    """

    weights: dict[str, Array]
    biases: dict[str, Array]
    readout: Readout
    sizes: tuple[tuple[str, int], ...] = eqx.field(static=True)
    projections: tuple[Projection, ...] = eqx.field(static=True)
    output: str = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    # -- structure ---------------------------------------------------------------------

    @property
    def populations(self) -> dict[str, int]:
        """Population sizes, input included (``{"input": n_in, "h1": ..., ...}``)."""
        return dict(self.sizes)

    @property
    def holomorphic(self) -> bool:
        return get_activation(self.activation).holomorphic

    @property
    def symmetric(self) -> bool:
        return all(p.tied for p in self.projections)

    # -- dynamics ----------------------------------------------------------------------

    def prepare(self, x: Array) -> DenseDrive:
        x = x.reshape(x.shape[0], -1).astype(self.biases[self.output].dtype)
        drive = {p: jnp.broadcast_to(b, (x.shape[0],) + b.shape) for p, b in self.biases.items()}
        for e in self.projections:
            if e.src == INPUT:
                drive[e.dst] = drive[e.dst] + x @ self.weights[e.name]
        transposed = {e.name: jnp.transpose(self.weights[e.name]) for e in self.projections
                      if e.tied and e.src != INPUT}
        return DenseDrive(inputs=drive, transposed=transposed)

    def init_state(self, drive: DenseDrive) -> dict[str, Array]:
        return {p: jnp.zeros_like(d) for p, d in drive.inputs.items()}

    def activity(self, u: dict[str, Array]) -> dict[str, Array]:
        act = get_activation(self.activation)
        return {p: act(v) for p, v in u.items()}

    def interaction(
        self, a: dict[str, Array], drive: DenseDrive, targets: tuple[str, ...] | None = None
    ) -> dict[str, Array]:
        """``h(a)``: the prepared input drive plus every internal projection (only into
        ``targets`` when given)."""
        h = dict(drive.inputs) if targets is None else {p: drive.inputs[p] for p in targets}
        for e in self.projections:
            if e.src == INPUT:
                continue
            if e.dst in h:
                h[e.dst] = h[e.dst] + matmul(a[e.src], self.weights[e.name])
            if e.tied and e.src in h:
                h[e.src] = h[e.src] + matmul(a[e.dst], drive.transposed[e.name])
        return h

    def field(self, u: dict[str, Array], drive: DenseDrive) -> dict[str, Array]:
        h = self.interaction(self.activity(u), drive)
        return {p: h[p] - u[p] for p in u}

    def field_on(self, u: dict[str, Array], drive: DenseDrive, group: tuple[str, ...]) -> dict[str, Array]:
        h = self.interaction(self.activity(u), drive, targets=group)
        return {p: h[p] - u[p] for p in group}

    def partition(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """2-colour the coupling graph of the internal populations (BFS); ``None`` if an
        odd cycle (or a skip over one layer) makes it non-bipartite."""
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
        return groups if all(groups) else None

    def feedback_pairs(self) -> dict[str, tuple[Array, Array | None]]:
        """Internal pairs coupled both ways, named after the projection listed first."""
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

        ``dPhi/da = h(a)``; classic EP contrasts ``dPhi/dtheta`` at two fixed points.
        """
        if not self.symmetric:
            raise ValueError("the primitive (energy) exists for tied networks only")
        x = x.reshape(x.shape[0], -1).astype(self.biases[self.output].dtype)
        src = dict(a, **{INPUT: x})
        phi = sum(jnp.sum(a[p] * b, axis=-1) for p, b in self.biases.items())
        for e in self.projections:
            phi = phi + jnp.sum((src[e.src] @ self.weights[e.name]) * a[e.dst], axis=-1)
        return phi


# -- constructors ----------------------------------------------------------------------


def _uniform(key: Array, shape: tuple[int, ...], bound: float, dtype) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)


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
) -> DenseNetwork:
    """A dense network from a list of projections ``[[src, dst], ...]``.

    ``feedback="tied"``: each pair is one symmetric coupling. ``"untied"``: each pair acts
    one way; when both ``[a, b]`` and a later ``[b, a]`` are listed, the feedback matrix
    is initialised as ``B = sin(alpha) B_init + cos(alpha) W^T`` (``alpha`` in degrees:
    0 is symmetric, 90 independent). Weights and biases are drawn uniformly in
    ``+-init_scale / sqrt(fan_in)`` (PyTorch's ``Linear`` default for ``init_scale=1``).
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
    alpha = math.radians(asymmetry_angle)
    for e in projs:
        bound = init_scale / math.sqrt(sizes[e.src])
        w = _uniform(next(keys), (sizes[e.src], sizes[e.dst]), bound, dtype)
        forward = weights.get(f"{e.dst}->{e.src}")
        if not e.tied and forward is not None and e.dst != INPUT:
            w = math.sin(alpha) * w + math.cos(alpha) * forward.T
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
    - ``readout="mse"``: ``n_last`` is an output population ``out`` whose activity is
      compared with the one-hot target.

    Forward projections join consecutive layers; with untied feedback the reverse
    projections run from the output back to ``h1`` (none into the input).
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
        pop_sizes, classes = list(sizes[1:]), sizes[-1]
        names = [INPUT] + [f"h{i}" for i in range(1, len(pop_sizes))] + ["out"]
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
