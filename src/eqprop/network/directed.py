"""Neuron-level directed networks (Farinha et al. 2020, arXiv 2006.08798, "DEEP").

Neurons, in this order: ``n_in`` inputs (clamped to ``x``), one bias neuron (clamped to
1), ``H`` hidden and ``n_out`` output neurons; the hidden and output neurons are *free*.
One weight matrix ``W`` ``(n, n)``, ``W[i, j]`` the weight from ``i`` to ``j``, and a
fixed connectivity ``mask`` ``(n, n)`` (booleans, not trainable): the field only ever
sees ``W * mask``, so a masked entry gets a zero gradient and stays exactly zero through
any optimizer (it starts at zero). Nothing projects into an input or the bias, and there
are no self-loops.

Connectivity (:func:`connectivity_mask`): ``"complete"`` (every other ordered pair: the
paper's network), ``"layered"`` (inputs to the first hidden layer, the bias to every free
neuron, consecutive layers both ways: the mask of eqprop's layered MLP with an ``mse``
output), ``"random"`` (each allowed pair with probability ``density``).

States are ``{"hidden": (B, H), "out": (B, n_out)}``. Two dynamics on the same graph:

- ``"deep"`` (:class:`DeepNetwork`, the paper's): ``ds_j/dt = sum_i W_ij s_i - s_j
  sum_k W_jk`` with the activity the state itself, Euler steps projected onto ``[0, 1]``
  (:meth:`DeepNetwork.project`);
- ``"rate"`` (:class:`RateNetwork`, :class:`TiedRateNetwork`): eqprop's standard field
  ``F(u) = h(a) - u`` with ``a = act(u)`` and ``h_j = sum_i W_ij a_i`` (clamped neurons
  contribute ``x`` and 1 themselves), holomorphic where the activation is. With tied
  feedback ``W[i, j]`` for ``i < j`` among the free neurons couples both ways (the
  mask keeps the upper triangle of the free block): an energy-based network.
"""

from __future__ import annotations

import abc
from collections import deque
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ..activations import get_activation
from ..config import ConfigError
from ..registry import ACTIVATIONS, MODELS, READOUTS
from ..settings import POSITIVE, POSITIVE_INT, Bounds, SettingError, setting
from .base import BoxProjectedModel, ConnectedModel, EnergyModel, FeedbackModel, InteractionModel
from .kinds import DTYPES, ModelKind
from .ops import input_batch, matmul
from .readout import Readout, make_readout

__all__ = ["CONNECTIVITIES", "DYNAMICS", "DirectedDrive", "DirectedNetwork", "DeepNetwork",
           "RateNetwork", "TiedRateNetwork", "Directed", "connectivity_mask", "directed", "HIDDEN",
           "OUT"]

CONNECTIVITIES = ("complete", "layered", "random")
DYNAMICS = ("deep", "rate")
HIDDEN, OUT = "hidden", "out"


# -- the graph -------------------------------------------------------------------------


def connectivity_mask(n_in: int, hidden: int, n_out: int, connectivity: str, *,
                      layers: tuple[int, ...] = (), density: float = 1.0,
                      key: Array | None = None) -> np.ndarray:
    """The connectivity of a directed network, ``mask[i, j]`` true when ``i -> j`` exists.

    Neuron order: inputs ``[0, n_in)``, the bias ``n_in``, hidden, outputs (last).

    **Arguments:** ``n_in``, ``hidden``, ``n_out``: neuron counts; ``connectivity``:
    ``"complete"``, ``"layered"`` or ``"random"``; ``layers``: the hidden layers' sizes
    for ``"layered"`` (summing to ``hidden``; empty: one layer); ``density``: the
    probability of each allowed pair for ``"random"``; ``key``: its PRNG key.

    **Returns:** a boolean NumPy array ``(n, n)``, ``n = n_in + 1 + hidden + n_out``,
    false on the diagonal and in every column of an input or the bias.

    **Raises:** ``ValueError`` for an unknown connectivity, layer sizes that do not sum to
    ``hidden``, or ``"random"`` without a key.
    """
    n_c = n_in + 1
    n = n_c + hidden + n_out
    allowed = np.ones((n, n), bool)
    allowed[:, :n_c] = False
    np.fill_diagonal(allowed, False)
    if connectivity == "complete":
        return allowed
    if connectivity == "random":
        if key is None:
            raise ValueError("connectivity 'random' needs a PRNG key")
        draw = np.asarray(jax.random.uniform(key, (n, n))) < density
        return allowed & draw
    if connectivity != "layered":
        raise ValueError(f"connectivity must be one of {', '.join(map(repr, CONNECTIVITIES))}, "
                         f"got {connectivity!r}")
    layers = tuple(layers) or (hidden,)
    if sum(layers) != hidden:
        raise ValueError(f"the hidden layers {list(layers)} must sum to hidden = {hidden}")
    bounds = np.cumsum((n_c, *layers, n_out))
    groups = [range(0, n_in)] + [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    mask = np.zeros((n, n), bool)
    mask[n_in, n_c:] = True  # the bias drives every free neuron
    for k in range(len(groups) - 1):
        src, dst = groups[k], groups[k + 1]
        mask[np.ix_(src, dst)] = True
        if k > 0:  # consecutive free layers both ways
            mask[np.ix_(dst, src)] = True
    return mask


def unreachable_outputs(mask: np.ndarray, n_in: int, n_out: int) -> list[int]:
    """Output neurons (numbered ``0 .. n_out - 1``) that no input reaches along ``mask``."""
    n = mask.shape[0]
    seen = np.zeros(n, bool)
    seen[:n_in] = True
    queue = deque(range(n_in))
    while queue:
        i = queue.popleft()
        for j in np.flatnonzero(mask[i] & ~seen):
            seen[j] = True
            queue.append(int(j))
    return [k for k in range(n_out) if not seen[n - n_out + k]]


# -- the model -------------------------------------------------------------------------


class DirectedDrive(eqx.Module):
    """What a directed network hoists out of the relaxation loop for a batch.

    ``inputs``: ``(B, n_free)``, the clamped neurons' drive ``sum_{i clamped} W_ij s_i``
    of each free neuron ``j``; ``leak``: ``(n_free,)``, the DEEP dynamics' outgoing sums
    ``sum_k W_jk`` (``None`` for rate dynamics).
    """

    inputs: Array
    leak: Array | None = None


class DirectedNetwork(FeedbackModel, ConnectedModel):
    """Abstract neuron-level directed network: the graph, the weights, the readout.

    **Fields:** ``W``: ``(n, n)`` weights, ``W[i, j]`` from ``i`` to ``j``; ``mask``:
    ``(n, n)`` booleans (not trainable; ``W`` is only used as ``W * mask``);
    ``readout``; ``output`` (static, ``"out"``); ``sizes`` (static): ``(n_in, H,
    n_out)``; ``activation`` (static): a registered activation name (rate dynamics).
    """

    W: Array
    mask: Array
    readout: Readout
    output: str = eqx.field(static=True)
    sizes: tuple[int, int, int] = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    # -- structure ---------------------------------------------------------------------

    @property
    def n_clamped(self) -> int:
        """Inputs plus the bias neuron."""
        return self.sizes[0] + 1

    @property
    def n_free(self) -> int:
        """Hidden plus output neurons."""
        return self.sizes[1] + self.sizes[2]

    def connections(self) -> dict[str, Array]:
        """``{"W": mask}``: pruning removes and counts only existing connections."""
        return {"W": self.mask}

    def weights(self) -> Array:
        """``W * mask`` ``(n, n)``: the weights the dynamics use."""
        return jnp.where(self.mask, self.W, jnp.zeros((), self.W.dtype))

    def flat(self, u: dict[str, Array]) -> Array:
        """The free neurons' vector ``(..., n_free)`` of a state or activity dict
        ``{"hidden": (..., H), "out": (..., n_out)}`` (hidden first)."""
        return jnp.concatenate([u[HIDDEN], u[OUT]], axis=-1)

    def unflat(self, s: Array) -> dict[str, Array]:
        """The inverse of :meth:`flat`: ``(..., n_free)`` to ``{"hidden", "out"}``."""
        return {HIDDEN: s[..., :self.sizes[1]], OUT: s[..., self.sizes[1]:]}

    def clamped(self, x: Array) -> Array:
        """The clamped neurons' states ``(B, n_in + 1)``: ``x`` flattened and a column of
        ones (the bias neuron), in the weights' dtype."""
        x = input_batch(x, (self.sizes[0],), type(self).__name__, any_layout=True).astype(self.W.dtype)
        return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=-1)

    def init_state(self, drive: DirectedDrive) -> dict[str, Array]:
        """Zeros ``{"hidden": (B, H), "out": (B, n_out)}`` (the dtype of the drive)."""
        return self.unflat(jnp.zeros_like(drive.inputs))

    @abc.abstractmethod
    def jacobian(self) -> np.ndarray:
        """``dF/du`` over the free neurons at the initial state, for any input (NumPy
        float64, ``(n_free, n_free)``, ``J[j, k] = dF_j/du_k``)."""

    def check_step(self, dt: float) -> None:
        """Refuse a step size for which the forward Euler step oscillates on these weights.

        A mode of the free neurons' Jacobian ``J`` (at the initial state) that decays in
        continuous time (``Re lambda < 0``) oscillates with a growing amplitude under the
        Euler step when ``|1 + dt lambda| >= 1``; the largest safe step is
        ``min(-2 Re lambda / |lambda|^2)``.

        **Arguments:** ``dt``: the step in units of the relaxation time.

        **Raises:** ``ValueError`` (one line, starting ``dynamics.dt:``) naming the mode
        and the largest safe step.
        """
        lam = np.linalg.eigvals(self.jacobian())
        eps = 1e-9 * (1.0 + np.max(np.abs(lam)))  # the DEEP zero mode is not a decaying one
        stable = lam[lam.real < -eps]
        if stable.size == 0:
            return
        growth = np.abs(1.0 + dt * stable)
        if np.max(growth) >= 1.0 - 1e-12:
            worst = stable[int(np.argmax(growth))]
            safe = float(np.min(-2.0 * stable.real / np.abs(stable) ** 2))
            raise ValueError(
                f"dynamics.dt: the Euler step oscillates on the initial weights: dt = {dt:g} gives "
                f"|1 + dt lambda| = {np.max(growth):.3g} >= 1 for the decaying mode lambda = "
                f"{worst:.3g} of the Jacobian; use dt < {safe:.3g} (or smaller weights, "
                "model.init_scale)")

    def feedback_pairs(self) -> dict[str, tuple[Array, Array | None]]:
        """``{"free-free": (W_ff, W_ff)}``: the free block is its own feedback, so the
        diagnostics' angle is the one between ``W_ff`` and ``W_ff^T``."""
        c = self.n_clamped
        w = self.weights()[c:, c:]
        return {"free-free": (w, w)}


class DeepNetwork(DirectedNetwork, BoxProjectedModel):
    """The DEEP dynamics (Farinha et al. 2020, arXiv 2006.08798, Eq. 1).

    ``ds_j/dt = sum_i W_ij s_i - s_j sum_k W_jk`` for the free neurons (``i`` over every
    neuron, clamped ones included; ``k`` over the free ones, the only targets), the
    activity being the state (``a = s``). Every solver steps ``s <- clip(s + dt F(s),
    0, 1)`` (:meth:`project`).

    :meth:`field` is the paper's field itself, also on a bound where it points out of the
    box: the clip is the projection of the step, so a nudged phase (field plus nudge,
    then clipped) follows the paper exactly. At a fixed point of the clipped map the field
    of a saturated neuron is not zero (with random weights most free neurons sit on a
    bound: Farinha et al. 2020, arXiv 2006.08798, and docs/directed.md); its fixed points are those of the projected step,
    ``clip(s + dt F(s)) = s``, and the exact references (implicit, exact nudge), which
    linearise ``F``, hold only where no neuron is saturated.

    Not holomorphic (the clip): real nudges only.
    """

    @property
    def holomorphic(self) -> bool:
        """False: the clip accepts no complex states."""
        return False

    def prepare(self, x: Array) -> DirectedDrive:
        """``DirectedDrive(inputs=(B, n_free), leak=(n_free,))``: the clamped neurons'
        drive and the outgoing sums ``sum_k W_jk``."""
        w = self.weights()
        c = self.n_clamped
        return DirectedDrive(inputs=matmul(self.clamped(x), w[:c, c:]), leak=jnp.sum(w[c:, c:], axis=1))

    def activity(self, u: dict[str, Array]) -> dict[str, Array]:
        """The state itself (``a = s``)."""
        return dict(u)

    def field(self, u: dict[str, Array], drive: DirectedDrive) -> dict[str, Array]:
        """``F_j = sum_i W_ij s_i - s_j sum_k W_jk`` for the free neurons, ``{p: (B, n_p)}``."""
        c = self.n_clamped
        s = self.flat(u)
        f = drive.inputs + matmul(s, self.weights()[c:, c:]) - s * drive.leak
        return self.unflat(f)

    def jacobian(self) -> np.ndarray:
        """The linear part ``J = W_ff^T - diag(sum_k W_jk)`` (no clip): every column sums
        to zero (the DEEP field conserves the free neurons' activity; docs/directed.md)."""
        c = self.n_clamped
        w = np.asarray(self.weights(), np.float64)[c:, c:]
        return w.T - np.diag(w.sum(axis=1))

    def state_bounds(self) -> dict[str, tuple[float, float]]:
        """The box ``[0, 1]`` of every free neuron (the projected stability certificate
        and :meth:`project`, the clip, read it)."""
        return {HIDDEN: (0.0, 1.0), OUT: (0.0, 1.0)}

    def project(self, u: dict[str, Array]) -> dict[str, Array]:
        """``clip(s, 0, 1)`` for every population given."""
        return {p: jnp.clip(v, 0.0, 1.0) for p, v in u.items()}


class _Rate(DirectedNetwork, InteractionModel):
    """Rate dynamics on a directed graph: ``F(u) = h(act(u)) - u``."""

    @property
    def holomorphic(self) -> bool:
        """Whether the activation accepts complex states."""
        return get_activation(self.activation).holomorphic

    def coupling(self) -> Array:
        """``(n_free, n_free)``: the free block of the effective weights."""
        c = self.n_clamped
        return self.weights()[c:, c:]

    def prepare(self, x: Array) -> DirectedDrive:
        """``DirectedDrive(inputs=(B, n_free))``: ``x W_xf + W_bias,f``."""
        c = self.n_clamped
        return DirectedDrive(inputs=matmul(self.clamped(x), self.weights()[:c, c:]))

    def activity(self, u: dict[str, Array]) -> dict[str, Array]:
        """``{p: act(u[p])}``."""
        act = get_activation(self.activation)
        return {p: act(v) for p, v in u.items()}

    def interaction(self, a: dict[str, Array], drive: DirectedDrive) -> dict[str, Array]:
        """``h(a) = drive + a_free W_eff,ff``; complex ``a`` with real ``W`` as two real
        products. ``{p: (B, n_p)}``."""
        return self.unflat(drive.inputs + matmul(self.flat(a), self.coupling()))

    def jacobian(self) -> np.ndarray:
        """``act'(0) K^T - I`` at the initial state ``u = 0``, ``K`` :meth:`coupling`."""
        slope = float(jax.grad(get_activation(self.activation))(0.0))
        k = np.asarray(self.coupling(), np.float64)
        return slope * k.T - np.eye(k.shape[0])

    def field(self, u: dict[str, Array], drive: DirectedDrive) -> dict[str, Array]:
        """``F_p(u) = h_p(act(u)) - u_p``."""
        h = self.interaction(self.activity(u), drive)
        return {p: h[p] - u[p] for p in u}


class RateNetwork(_Rate):
    """Rate dynamics with independent weights both ways (generalized EP applies)."""


class TiedRateNetwork(_Rate, EnergyModel):
    """Rate dynamics with symmetric couplings: ``W[i, j]`` (``i < j``, free) acts both
    ways; energy ``Phi(a) = a_f U a_f + (x W_xf + W_bias,f) . a_f`` with ``U`` the upper
    triangle, ``dPhi/da = h``."""

    @property
    def symmetric(self) -> bool:
        """True."""
        return True

    def coupling(self) -> Array:
        """``U + U^T``, ``U`` the (upper-triangular) free block."""
        u = super().coupling()
        return u + u.T

    def primitive(self, a: dict[str, Array], x: Array) -> Array:
        """``Phi(a)`` per example, ``(B,)``."""
        s = self.flat(a)
        u = super().coupling()
        c = self.n_clamped
        drive = matmul(self.clamped(x), self.weights()[:c, c:])
        return jnp.sum(matmul(s, u) * s, axis=-1) + jnp.sum(drive * s, axis=-1)

    def feedback_pairs(self) -> dict[str, tuple[Array, Array | None]]:
        """``{"free-free": (U, None)}``: tied."""
        return {"free-free": (super().coupling(), None)}


# -- constructor -----------------------------------------------------------------------


def at_asymmetry_angle(k: Array, both: np.ndarray, degrees: float) -> Array:
    """``k`` with its entries on ``both`` (a symmetric pattern) re-mixed so that the angle
    between ``k`` and ``k^T`` is ``degrees``; the other entries unchanged.

    ``k = S + A`` (symmetric and antisymmetric parts on ``both``); the result there is
    ``|k| (cos(t/2) S/|S| + sin(t/2) A/|A|)``, ``t = degrees``: then ``<k, k^T> / |k|^2 =
    cos^2(t/2) - sin^2(t/2) = cos t``.

    **Arguments:** ``k`` ``(n, n)``; ``both`` ``(n, n)`` bool, symmetric; ``degrees`` in
    ``[0, 180]``.

    **Returns:** ``(n, n)``, same dtype.

    **Raises:** ``ValueError`` for an angle outside ``[0, 180]`` or a pattern without a pair.
    """
    if not 0.0 <= degrees <= 180.0:
        raise ValueError(f"asymmetry_angle must be in [0, 180] degrees, got {degrees}")
    if not np.any(both):
        raise ValueError("asymmetry_angle: no pair of free neurons is connected both ways")
    on = jnp.asarray(both)
    paired = jnp.where(on, k, 0.0)
    sym, anti = 0.5 * (paired + paired.T), 0.5 * (paired - paired.T)
    half = np.radians(degrees) / 2
    mixed = (np.cos(half) * sym / jnp.linalg.norm(sym)
             + np.sin(half) * anti / jnp.linalg.norm(anti)) * jnp.linalg.norm(paired)
    return jnp.where(on, mixed.astype(k.dtype), k)



def directed(n_in: int, hidden: int, n_out: int, *, key: Array, n_classes: int | None = None,
             connectivity: str = "complete", layers: tuple[int, ...] = (),
             density: float = 0.5, dynamics: str = "rate", feedback: str = "untied",
             activation: str = "sigmoid4", readout: str = "mse", dtype=jnp.float32,
             init_scale: float = 1.0, asymmetry_angle: float | None = None) -> DirectedNetwork:
    """A neuron-level directed network.

    Initialisation of the unmasked weights: ``"deep"``: normal with standard deviation
    ``0.05 init_scale`` (the authors' notebooks); ``"rate"``: uniform in
    ``+-init_scale / sqrt(fan_in_j)`` with ``fan_in_j`` the unmasked entries into ``j``.
    With ``asymmetry_angle = theta`` (rate dynamics, untied), the free block's pairs
    connected both ways are then re-mixed from the symmetric and antisymmetric parts
    ``S``, ``A`` of the draw as ``cos(theta/2) S/|S| + sin(theta/2) A/|A|`` (scaled back
    to the draw's norm), so that the angle between the free block and its transpose is
    exactly ``theta`` (Laborieux and Zenke 2024, arXiv 2309.02214, for layered nets);
    ``None`` keeps the independent draws (an angle near 90 degrees).

    **Arguments:** ``n_in``: inputs; ``hidden``: hidden neurons ``H``; ``n_out``: output
    neurons; ``key``: PRNG key; ``n_classes``: classes of the readout (default
    ``n_out``); ``connectivity``, ``layers``, ``density``: as
    :func:`connectivity_mask`; ``dynamics``: ``"deep"`` or ``"rate"``; ``feedback``:
    ``"untied"`` or ``"tied"`` (rate only); ``activation``: a registered activation
    (rate); ``readout``: a registered readout; ``dtype``; ``init_scale``;
    ``asymmetry_angle``: degrees in ``[0, 180]`` or ``None``.

    **Returns:** a :class:`DeepNetwork`, :class:`RateNetwork` or
    :class:`TiedRateNetwork`.

    **Raises:** ``ValueError`` (one line) for an unknown connectivity, dynamics or
    feedback, tied DEEP dynamics, an output neuron that no input reaches, or a readout
    that does not fit.
    """
    if dynamics not in DYNAMICS:
        raise ValueError(f"dynamics must be 'deep' or 'rate', got {dynamics!r}")
    if feedback not in ("tied", "untied"):
        raise ValueError(f"feedback must be 'tied' or 'untied', got {feedback!r}")
    if feedback == "tied" and dynamics == "deep":
        raise ValueError("feedback = 'tied' applies to dynamics = 'rate' only")
    if asymmetry_angle is not None and (dynamics != "rate" or feedback != "untied"):
        raise ValueError("asymmetry_angle applies to dynamics = 'rate' with feedback = 'untied'")
    get_activation(activation)
    k_mask, k_w, k_r = jax.random.split(key, 3)
    mask = connectivity_mask(n_in, hidden, n_out, connectivity, layers=layers, density=density,
                             key=k_mask)
    c = n_in + 1
    if feedback == "tied":  # one entry per free pair: the upper triangle of the free block
        mask[c:, c:] &= np.triu(np.ones((hidden + n_out,) * 2, bool), 1)
    both = mask.copy()
    if feedback == "tied":
        both[c:, c:] |= mask[c:, c:].T
    lost = unreachable_outputs(both, n_in, n_out)
    if lost:
        raise ValueError(f"connectivity {connectivity!r}"
                         + (f" (density {density:g})" if connectivity == "random" else "")
                         + f" leaves output neuron(s) {lost} unreachable from every input")
    n = mask.shape[0]
    if dynamics == "deep":
        w = 0.05 * init_scale * jax.random.normal(k_w, (n, n), dtype)
    else:
        fan_in = np.maximum(both.sum(axis=0), 1)
        bound = jnp.asarray(init_scale / np.sqrt(fan_in), dtype)
        w = jax.random.uniform(k_w, (n, n), dtype, -1.0, 1.0) * bound[None, :]
    mask_j = jnp.asarray(mask)
    w = jnp.where(mask_j, w, jnp.zeros((), dtype))
    if asymmetry_angle is not None:
        w = w.at[c:, c:].set(at_asymmetry_angle(w[c:, c:], mask[c:, c:] & mask[c:, c:].T,
                                                asymmetry_angle))
    cls = DeepNetwork if dynamics == "deep" else (TiedRateNetwork if feedback == "tied" else RateNetwork)
    return cls(W=w, mask=mask_j,
               readout=make_readout(readout, n_out, n_out if n_classes is None else n_classes,
                                    key=k_r, dtype=dtype),
               output=OUT, sizes=(n_in, hidden, n_out), activation=activation)


# -- the model kind ([model] kind = "directed") ------------------------------------------

@MODELS.register("directed")
@dataclass(frozen=True)
class Directed(ModelKind):
    """A neuron-level directed network (:func:`directed`; Farinha et al. 2020, arXiv
    2006.08798): inputs and outputs from the data, ``hidden`` free neurons between.

    **Raises:** :class:`~eqprop.settings.SettingError` for tied DEEP dynamics, hidden
    layers that do not sum to ``hidden`` or given without ``connectivity = 'layered'``, a
    ``density`` without ``connectivity = 'random'`` or an ``activation`` with the DEEP
    dynamics (set away from their defaults: they would do nothing);
    :meth:`build` raises :class:`~eqprop.config.ConfigError` for an output that no input
    reaches.
    """

    hidden: int = setting(5, "Hidden neurons.", bounds=POSITIVE_INT)
    connectivity: str = setting("complete", "Which ordered pairs carry a weight: complete "
                                "(all but self-loops and into inputs/bias), layered (the layered "
                                "MLP's), random (each with probability density).",
                                choices=CONNECTIVITIES)
    layers: tuple[int, ...] = setting((), "Hidden layer sizes of connectivity = 'layered', "
                                      "summing to hidden (empty: one layer).", bounds=POSITIVE_INT)
    density: float = setting(0.5, "Probability of each allowed connection (connectivity = "
                             "'random').", bounds=Bounds(lo=0, hi=1, lo_open=True))
    dynamics: str = setting("rate", "deep: the paper's clipped linear dynamics; rate: "
                            "u <- h(act(u)) (hEP, exact references, homeostasis).",
                            choices=DYNAMICS)
    feedback: str = setting("untied", "untied: W[i, j] and W[j, i] independent; tied: one "
                            "symmetric weight per free pair (rate dynamics only).",
                            choices=("untied", "tied"))
    activation: str = setting("sigmoid4", "Neuron activation (rate dynamics).",
                              choices=ACTIVATIONS)
    readout: str = setting("mse", "Output cost: mse (one output neuron per class), binary (one "
                           "output neuron, two classes, target 0 or 1) or softmax.",
                           choices=READOUTS)
    dtype: str = setting("float32", "Floating-point precision.", choices=DTYPES)
    init_scale: float = setting(1.0, "Scale of the weight initialisation (deep: std 0.05 "
                                "init_scale; rate: +-init_scale / sqrt(fan-in)).", bounds=POSITIVE)
    asymmetry_angle: float | None = setting(
        None, "Initial angle in degrees between the free block of W and its transpose (rate, "
        "untied; absent: independent draws, near 90).", bounds=Bounds(lo=0, hi=180), optional=True)

    def __post_init__(self) -> None:
        if self.connectivity not in CONNECTIVITIES:
            raise SettingError("connectivity", f"must be one of {', '.join(map(repr, CONNECTIVITIES))}, "
                               f"got {self.connectivity!r}")
        if self.dynamics not in DYNAMICS:
            raise SettingError("dynamics", f"must be 'deep' or 'rate', got {self.dynamics!r}")
        if self.feedback == "tied" and self.dynamics == "deep":
            raise SettingError("feedback", "'tied' applies to dynamics = 'rate' only")
        if self.layers and self.connectivity != "layered":
            raise SettingError("layers", "only meaningful with connectivity = 'layered'")
        # keys that another setting makes moot are refused when set away from their default
        # (a review's density = 0.3 trained the complete network without a word)
        if self.density != 0.5 and self.connectivity != "random":
            raise SettingError("density", f"applies to connectivity = 'random' only, got "
                               f"connectivity = {self.connectivity!r}")
        if self.activation != "sigmoid4" and self.dynamics == "deep":
            raise SettingError("activation", "applies to dynamics = 'rate' only (the DEEP dynamics "
                               "are clipped linear)")
        if self.asymmetry_angle is not None and (self.dynamics != "rate" or self.feedback != "untied"):
            raise SettingError("asymmetry_angle", "applies to dynamics = 'rate' with feedback = "
                               f"'untied', got dynamics = {self.dynamics!r}, feedback = {self.feedback!r}")
        if self.layers and sum(self.layers) != self.hidden:
            raise SettingError("layers", f"{list(self.layers)} must sum to hidden = {self.hidden}")

    def build(self, *, input_size: int, n_classes: int, key: jax.Array) -> DirectedNetwork:
        """:func:`directed` with ``input_size`` inputs and one output neuron per class (one
        in all for ``readout = "binary"``).

        **Raises:** :class:`~eqprop.config.ConfigError` (``model.connectivity``) when an
        output neuron is unreachable from every input, or (``model``) another rejection
        of :func:`directed`.
        """
        try:
            n_out = READOUTS.get(self.readout).output_units(n_classes)
            return directed(input_size, self.hidden, n_out, key=key, n_classes=n_classes,
                            connectivity=self.connectivity, layers=self.layers,
                            density=self.density, dynamics=self.dynamics, feedback=self.feedback,
                            activation=self.activation, readout=self.readout,
                            dtype=jnp.dtype(self.dtype), init_scale=self.init_scale,
                            asymmetry_angle=self.asymmetry_angle)
        except ValueError as err:
            key_ = ("model.connectivity" if "unreachable" in str(err) else
                    "model.readout" if "readout" in str(err) else "model")
            raise ConfigError(f"{key_}: {err}") from None
