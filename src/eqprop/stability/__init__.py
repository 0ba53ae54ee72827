"""Stability certificates of the free fixed point, for every model (docs/stability.md).

- :mod:`.certificates`: the spectral radius of the step map, the Lyapunov and global
  contraction certificates, the projected certificate of a clipped model, ``certify`` and
  the perturbation test they are checked against;
- :mod:`.enforce`: ``[stability] enforce = "contraction"`` and the per-epoch figures;
- :mod:`.table`: the table ``eqprop stability`` prints.
"""

from .certificates import (StabilityError, StabilitySettings, activation_lipschitz, certify,
                           contraction_bound, coupling_norm, gershgorin, iteration_radius,
                           linear_interaction, lyapunov, per_example_residual, perturbation_check,
                           perturbation_steps, projected_certificate, spectral_radius_power,
                           iteration_map, solver_groups, stability, state_jacobian,
                           sweep_radius)
from .enforce import (coupling_leaves, coupling_scale, epoch_figures, make_enforcer,
                      program_enforcer, program_figures)
from .table import format_table

__all__ = ["StabilitySettings", "StabilityError", "state_jacobian", "iteration_radius",
           "spectral_radius_power", "iteration_map", "solver_groups", "sweep_radius", "lyapunov",
           "gershgorin", "activation_lipschitz",
           "linear_interaction", "coupling_norm", "contraction_bound", "projected_certificate",
           "per_example_residual", "certify", "stability", "perturbation_check",
           "perturbation_steps", "format_table", "coupling_leaves", "coupling_scale",
           "make_enforcer", "epoch_figures", "program_enforcer", "program_figures"]
