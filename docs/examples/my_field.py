"""my_field.py: one population h with symmetric couplings S = (W + W^T) / 2 (docs/extending.md).
F(u) = sigmoid(u) S + b + x U - u;  energy Phi(a) = a S a / 2 + (b + x U) a, dPhi/da = F + u."""
import equinox as eqx
import jax
import jax.numpy as jnp

import eqprop
from eqprop.network import EnergyModel, InteractionModel, ModelKind, Readout, make_readout
from eqprop.settings import POSITIVE, POSITIVE_INT, setting


class MyField(InteractionModel, EnergyModel):
    W: jax.Array  # (n, n), used symmetrised
    b: jax.Array  # (n,)
    U: jax.Array  # (n_in, n)
    readout: Readout  # trainable softmax readout of h
    output: str = eqx.field(static=True)  # the nudged population
    holomorphic = True  # sigmoid accepts complex states: hEP's complex nudges work
    symmetric = True  # dF/da = S: an energy-based model

    def prepare(self, x):  # depends on the input only: hoisted out of the relaxation
        return x.reshape(x.shape[0], -1) @ self.U + self.b

    def init_state(self, drive):
        return {"h": jnp.zeros_like(drive)}

    def activity(self, u):
        return {"h": jax.nn.sigmoid(u["h"])}

    def interaction(self, a, drive):  # h(a) in F = h(a) - u
        return {"h": a["h"] @ ((self.W + self.W.T) / 2) + drive}

    def field(self, u, drive):
        return {"h": self.interaction(self.activity(u), drive)["h"] - u["h"]}

    def primitive(self, a, x):  # per example, (B,)
        h = a["h"]
        return jnp.sum(h * (h @ ((self.W + self.W.T) / 4) + self.prepare(x)), axis=-1)


@eqprop.register_model("my-field")  # [model] kind = "my-field"; its settings are the keys
class MyFieldKind(ModelKind):
    """One population with symmetric couplings (docs/examples/my_field.py)."""

    hidden: int = setting(64, "Units of the population h.", bounds=POSITIVE_INT)
    coupling: float = setting(0.5, "Scale of the initial couplings W.", bounds=POSITIVE)

    def build(self, *, input_size, n_classes, key):
        kw, ku, kr = jax.random.split(key, 3)
        n = self.hidden
        return MyField(W=self.coupling * jax.random.normal(kw, (n, n)) / n**0.5, b=jnp.zeros(n),
                       U=jax.random.normal(ku, (input_size, n)) / input_size**0.5,
                       readout=make_readout("softmax", n, n_classes, key=kr), output="h")
