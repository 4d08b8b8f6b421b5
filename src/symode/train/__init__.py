"""symode.train: the paper's experiments as training workflows (``symode train ...``).

* :class:`CNF`, :class:`CNFConfig`, :func:`train_cnf`: continuous normalizing flows (FFJORD)
  trained by any gradient method, with held-out likelihoods, exact resumption and plots;
* :class:`KdV`, :class:`EnergyModel`, :class:`PhysicsConfig`, :func:`train_physics`: the
  Korteweg-de Vries equation learned by an energy-conserving neural model (dopri8);
* :class:`LatentODE`, :class:`LatentConfig`, :func:`train_latent_ode`: a latent ODE on
  irregularly sampled spirals;
* :mod:`symode.train.data`: data that loads with no network (toy 2-D densities, scikit-learn's
  digits, stand-ins of the MAF tabular sets' shapes).
"""

from .choose import Choice, choose_gradient, parse_bytes
from .cnf import CNF, CNFBlock, ConcatLinear, ConcatSquashLinear, ODENet
from .data import DATASETS, Splits, load
from .latent import LatentConfig, LatentODE, spirals, train_latent_ode
from .loop import CNFConfig, evaluate_nll, load_checkpoint, train_cnf
from .physics import CahnHilliard, EnergyModel, EnergyNet, KdV, simulate
from .physics_loop import PhysicsConfig, train_physics

__all__ = [
    "CNF",
    "CahnHilliard",
    "CNFBlock",
    "CNFConfig",
    "Choice",
    "ConcatLinear",
    "ConcatSquashLinear",
    "DATASETS",
    "EnergyModel",
    "EnergyNet",
    "KdV",
    "LatentConfig",
    "LatentODE",
    "PhysicsConfig",
    "ODENet",
    "Splits",
    "choose_gradient",
    "evaluate_nll",
    "load",
    "load_checkpoint",
    "parse_bytes",
    "simulate",
    "spirals",
    "train_latent_ode",
    "train_physics",
    "train_cnf",
]
