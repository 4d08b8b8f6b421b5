"""PNG plots of a trained flow (matplotlib, the ``train`` or ``bench`` extra): the learned
density on a grid (2-D data) and samples beside the data (the first two coordinates)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import symode

from .cnf import CNF
from .data import Splits

__all__ = ["plot_cnf"]


def plot_cnf(model: CNF, data: Splits, config: Any, directory: Path, grid: int = 80) -> list[str]:
    """Write ``density.png`` (2-D data only) and ``samples.png`` into ``directory``; returns their
    names, or an empty list without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    steps = symode.AdaptiveSteps(rtol=config.rtol, atol=config.atol)
    dtype = data.train.dtype
    written = []
    shown = data.test[:2000]
    lo, hi = float(shown[:, :2].min()) - 0.5, float(shown[:, :2].max()) + 0.5
    if data.dim == 2:
        axis = torch.linspace(lo, hi, grid, dtype=dtype)
        xx, yy = torch.meshgrid(axis, axis, indexing="xy")
        points = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).to(config.device)
        with torch.no_grad():
            log_p = torch.cat(
                [model.log_prob(c, method=config.method, steps=steps, trace="exact")[0] for c in points.split(1600)]
            )
        fig, ax = plt.subplots(figsize=(4, 4))
        density = log_p.exp().reshape(grid, grid).cpu().numpy()
        ax.imshow(density, origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
        ax.set_title(f"learned density: {data.name}")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.savefig(directory / "density.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append("density.png")
    samples = model.sample(
        2000, generator=torch.Generator().manual_seed(0), dtype=dtype, method=config.method, steps=steps
    )
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, x, title in ((axes[0], shown.numpy(), "data (test split)"), (axes[1], samples.cpu().numpy(), "samples")):
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
        ax.set_title(title)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    fig.savefig(directory / "samples.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    written.append("samples.png")
    return written


def plot_physics(times, true, predicted, learned_energy, true_energy, directory: Path) -> list[str]:
    """``trajectory.png`` (the true and predicted held-out trajectory and their difference, in
    space-time) and ``energy.png`` (the learned energy along the model's rollout, the true energy
    along the true trajectory); an empty list without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), sharey=True)
    extent = (0.0, float(true.shape[-1]), float(times[0]), float(times[-1]))
    for ax, image, title in (
        (axes[0], true, "true"),
        (axes[1], predicted, "predicted"),
        (axes[2], predicted - true, "predicted - true"),
    ):
        shown = ax.imshow(image.detach().cpu().numpy(), origin="lower", aspect="auto", extent=extent, cmap="RdBu_r")
        ax.set_title(title)
        ax.set_xlabel("grid point")
        fig.colorbar(shown, ax=ax)
    axes[0].set_ylabel("t")
    fig.savefig(directory / "trajectory.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    t = times.cpu().numpy()
    ax.plot(t, (learned_energy - learned_energy[0]).cpu().numpy(), label="learned H along the model's rollout")
    ax.plot(t, (true_energy - true_energy[0]).cpu().numpy(), "--", label="true H along the true trajectory")
    ax.set_xlabel("t")
    ax.set_ylabel("H(t) - H(0)")
    ax.legend()
    fig.savefig(directory / "energy.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return ["trajectory.png", "energy.png"]
