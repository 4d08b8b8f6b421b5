"""Vector fields shared by the tests."""

import torch


class Field(torch.nn.Module):
    """A small non-autonomous MLP vector field."""

    def __init__(self, dim=3, hidden=8, dtype=torch.float64, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(dim + 1, hidden, generator=gen, dtype=dtype) / dim**0.5)
        self.b1 = torch.nn.Parameter(torch.randn(hidden, generator=gen, dtype=dtype) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(hidden, dim, generator=gen, dtype=dtype) / hidden**0.5)

    def forward(self, t, y):
        ty = torch.cat([y, t.expand(*y.shape[:-1], 1)], dim=-1)
        return torch.tanh(ty @ self.w1 + self.b1) @ self.w2 - 0.1 * y


class CNF(torch.nn.Module):
    """A continuous normalizing flow on (z, log p): f returns (dz/dt, -tr(df/dz)) with a
    Hutchinson estimate (fixed noise), so f itself calls torch.autograd.grad (create_graph)."""

    def __init__(self):
        super().__init__()
        self.net = Field(dim=3, hidden=8, seed=4)
        self.register_buffer(
            "noise", torch.randn(5, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        )

    def forward(self, t, state):
        z, _ = state
        with torch.enable_grad():
            z = z if z.requires_grad else z.requires_grad_(True)
            dz = self.net(t, z)
            vjp = torch.autograd.grad(dz, z, self.noise, create_graph=True)[0]
        return dz, -(vjp * self.noise).sum(-1)
