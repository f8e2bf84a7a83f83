"""Random noise on the eps-ball's surface: the control every attack must beat."""
from __future__ import annotations

import torch

from .gradient import lp_step, project


class UniformNoise:
    """Uniform random noise on the eps-ball surface (L-inf corners / L2 sphere)."""

    def __init__(self, model, eps: float, threat_model: str):
        self.eps, self.norm = eps, threat_model

    def __call__(self, x, y):
        return x + project(x, lp_step(torch.randn_like(x), self.eps, self.norm), self.eps, self.norm)
