"""A model that is not a DenseNetwork, written the way a user writes a plugin.

Loaded by the test table (``tests/table.py``) through :func:`eqprop.load_plugin` and by
``tests/test_plugins.py`` through ``eqprop train tests/plugins/hopfield.toml --plugin
tests/plugins/hopfield.py``. One population ``h`` of ``n`` units with couplings ``W``,
bias ``b`` and input weights ``U``::

    F(u) = C(W) act(u) + b + x U - u,   C(W) = (W + W^T) / 2 (symmetric) or W (not)

(row vectors: ``a @ C``). Symmetric, it derives from the energy
``Phi(a) = a C a / 2 + (b + x U) . a`` with ``dPhi/da = h(a)``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

import eqprop
from eqprop.activations import get_activation
from eqprop.network import EnergyModel, InteractionModel, ModelKind, Readout, make_readout
from eqprop.registry import ACTIVATIONS
from eqprop.settings import POSITIVE, POSITIVE_INT, setting


class Hopfield(InteractionModel, EnergyModel):
    """One fully coupled population; parameters ``W`` ``(n, n)``, ``b`` ``(n,)``, ``U``
    ``(n_in, n)`` and the readout."""

    W: jax.Array
    b: jax.Array
    U: jax.Array
    readout: Readout
    output: str = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    tied: bool = eqx.field(static=True)

    @property
    def holomorphic(self) -> bool:
        return get_activation(self.activation).holomorphic

    @property
    def symmetric(self) -> bool:
        return self.tied

    def couplings(self) -> jax.Array:
        return (self.W + self.W.T) / 2 if self.tied else self.W

    def prepare(self, x):
        x = x.reshape(x.shape[0], -1).astype(self.U.dtype)
        return x @ self.U + self.b

    def init_state(self, drive):
        return {self.output: jnp.zeros_like(drive)}

    def activity(self, u):
        return {k: get_activation(self.activation)(v) for k, v in u.items()}

    def interaction(self, a, drive):
        return {self.output: a[self.output] @ self.couplings() + drive}

    def field(self, u, drive):
        h = self.interaction(self.activity(u), drive)
        return {k: h[k] - u[k] for k in u}

    def primitive(self, a, x):
        if not self.tied:
            raise ValueError("the energy exists for symmetric couplings only (tied = true)")
        h = a[self.output]
        return jnp.sum(h * (h @ self.couplings() / 2 + self.prepare(x)), axis=-1)


@eqprop.register_model("test-hopfield")
class HopfieldKind(ModelKind):
    """A fully coupled population (``tests/plugins/hopfield.py``)."""

    hidden: int = setting(16, "Units of the population.", bounds=POSITIVE_INT)
    tied: bool = setting(True, "Symmetric couplings (W + W^T) / 2 (an energy-based model).")
    activation: str = setting("sigmoid4", "Neuron activation.", choices=ACTIVATIONS)
    coupling: float = setting(0.5, "Scale of the initial couplings.", bounds=POSITIVE)
    dtype: str = setting("float32", "Floating-point precision.", choices=("float32", "float64"))

    def build(self, *, input_size, n_classes, key):
        kw, ku, kb, kr = jax.random.split(key, 4)
        n, dtype = self.hidden, jnp.dtype(self.dtype)
        return Hopfield(
            W=self.coupling * jax.random.normal(kw, (n, n), dtype) / n**0.5,
            b=jax.random.uniform(kb, (n,), dtype, -0.5, 0.5),
            U=jax.random.normal(ku, (input_size, n), dtype) / input_size**0.5,
            readout=make_readout("softmax", n, n_classes, key=kr, dtype=dtype),
            output="h", activation=self.activation, tied=self.tied)
