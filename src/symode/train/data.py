"""Data that loads with no network, for the training workflows.

* The toy 2-D densities of the FFJORD and RNODE papers: ``moons``, ``circles``,
  ``8gaussians``, ``checkerboard``, ``pinwheel``, ``2spirals`` (written from their
  definitions, drawn with a seeded ``numpy`` generator).
* ``digits``: scikit-learn's bundled 8x8 digits (1797 x 64, values 0..16), dequantised with
  uniform noise and scaled to [0, 1] then standardised; needs ``scikit-learn`` (the ``train``
  extra).
* ``power``, ``gas``, ``hepmass``, ``miniboone``, ``bsds300``: **not** the MAF sets (they
  cannot be downloaded here) but Gaussian mixtures of their dimensions (6, 8, 21, 43, 63), so
  that memory and time are measured at the real sizes. Their likelihoods mean nothing for the
  real sets.

:func:`load` returns a :class:`Splits` of train, validation and test tensors, standardised
with the training split's mean and deviation (the toy sets are used as drawn).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["TOY", "TABULAR", "DATASETS", "Splits", "load", "toy_2d"]

TOY = ("moons", "circles", "8gaussians", "checkerboard", "pinwheel", "2spirals")
#: the MAF tabular sets' dimensions (the data are stand-ins of those shapes)
TABULAR = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}
DATASETS = (*TOY, "digits", *TABULAR)


@dataclass
class Splits:
    """Train, validation and test samples (rows), and what the data are."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    name: str
    note: str = ""

    @property
    def dim(self) -> int:
        return self.train.shape[1]


def toy_2d(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of the toy density ``name`` (one of :data:`TOY`), shape ``(n, 2)``."""
    if name == "moons":
        upper = rng.random(n) < 0.5
        angle = rng.random(n) * math.pi
        x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
        y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
        data = np.stack([x, y], 1) + 0.1 * rng.standard_normal((n, 2))
        return (data - [0.5, 0.25]) * 2  # centred, about [-3, 3]
    if name == "circles":
        outer = rng.random(n) < 0.5
        angle = rng.random(n) * 2 * math.pi
        radius = np.where(outer, 1.0, 0.5)
        data = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1) + 0.08 * rng.standard_normal((n, 2))
        return data * 3
    if name == "8gaussians":
        centres = np.array([(math.cos(a), math.sin(a)) for a in np.arange(8) * math.pi / 4]) * 2 * math.sqrt(2)
        return centres[rng.integers(8, size=n)] + 0.5 * rng.standard_normal((n, 2)) / math.sqrt(2)
    if name == "checkerboard":
        x1 = rng.random(n) * 4 - 2
        x2 = rng.random(n) - rng.integers(0, 2, n) * 2.0 + np.floor(x1) % 2
        return np.stack([x1, x2], 1) * 2
    if name == "pinwheel":
        arms, per_arm = 5, n // 5 + 1
        radial, tangential, rate = 0.3, 0.1, 0.25
        features = rng.standard_normal((arms * per_arm, 2)) * [radial, tangential] + [1.0, 0.0]
        labels = np.repeat(np.arange(arms), per_arm)
        angles = labels * 2 * math.pi / arms + rate * np.exp(features[:, 0])
        rot = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)], 1).reshape(-1, 2, 2)
        data = 2 * np.einsum("ti,tij->tj", features, rot)
        return rng.permutation(data)[:n]
    if name == "2spirals":
        s = np.sqrt(rng.random(n)) * 540 * (2 * math.pi) / 360
        sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
        data = sign[:, None] * np.stack([-np.cos(s) * s, np.sin(s) * s], 1) + rng.random((n, 2))
        return data / 3
    raise ValueError(f"unknown toy density {name!r}; choose one of {', '.join(TOY)}")


def load(name: str, *, n_train: int = 20000, n_test: int = 5000, seed: int = 0, dtype=torch.float32) -> Splits:
    """The data set ``name`` (one of :data:`DATASETS`) split into train, validation, test."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    rng = np.random.default_rng(seed)
    note = ""
    if name in TOY:
        samples = [toy_2d(name, n, rng) for n in (n_train, n_test, n_test)]
        splits = [torch.as_tensor(s, dtype=torch.float64) for s in samples]
    else:
        if name == "digits":
            data = _digits(rng)
        else:
            note = (
                f"a Gaussian mixture of the {name.upper()} set's dimension ({TABULAR[name]}); the MAF sets "
                "cannot be downloaded on these machines"
            )
            data = _mixture(rng, 3 * n_test + n_train, TABULAR[name])
        data = data[rng.permutation(len(data))]
        n_held = max(1, len(data) // 10)
        parts = data[2 * n_held :], data[n_held : 2 * n_held], data[:n_held]  # train, validation, test
        mean, std = parts[0].mean(0), parts[0].std(0) + 1e-6
        splits = [torch.as_tensor((x - mean) / std, dtype=torch.float64) for x in parts]
    train, val, test = (s.to(dtype) for s in splits)
    return Splits(train, val, test, name, note)


def _digits(rng: np.random.Generator) -> np.ndarray:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the digits data set is scikit-learn's: pip install scikit-learn (or symode's 'train' extra)"
        ) from None
    pixels = load_digits().data  # 1797 x 64, integers 0..16
    return (pixels + rng.random(pixels.shape)) / 17.0  # dequantised, in [0, 1)


def _mixture(rng: np.random.Generator, n: int, dim: int, components: int = 8) -> np.ndarray:
    means = rng.standard_normal((components, dim)) * 2
    scales = 0.3 + 0.7 * rng.random((components, dim))
    which = rng.integers(components, size=n)
    return means[which] + scales[which] * rng.standard_normal((n, dim))
