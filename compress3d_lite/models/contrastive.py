"""Contrastive alignment of two embedding spaces: symmetric InfoNCE with a learnable temperature
(CLIP; OpenShape's shape-image term, docs/paper.md §3), and the two stage-2 training modules
that use it: ``ShapeImageAligner`` (both towers, or a frozen tower run every step) and
``FrozenTowerAligner`` (a frozen tower whose embeddings were computed once).

For a batch of B matched pairs (a_k, b_k) of unit vectors, logits = exp(s) * a @ b.T and

    L = ( CE(logits, diag) + CE(logits.T, diag) ) / 2,

i.e. each a_k must pick out its own b_k among the B candidates and vice versa. s = log(1/T) is
learned, starts at log(1/0.07) and is capped at log(100) (CLIP's clamp).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """(B, D), (B, D) unit vectors, scalar log-scale -> symmetric InfoNCE loss (scalar)."""
    logits = logit_scale.exp() * a @ b.t()  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class ContrastiveLoss(nn.Module):
    """InfoNCE with the learnable temperature as a parameter."""

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.max_log = math.log(max_scale)

    def forward(self, a, b):
        return info_nce(a, b, self.logit_scale.clamp(max=self.max_log))

    @property
    def temperature(self) -> float:
        return float(1 / self.logit_scale.detach().clamp(max=self.max_log).exp())


class ShapeImageAligner(nn.Module):
    """The stage-2 training module: image tower + shape tower + InfoNCE between their outputs.

    forward(rgba (B, 4, H, W) in [0, 1], xyz (B, N, 3), rgb (B, N, 3))
        -> (loss, e_i (B, D), e_s (B, D), logit_scale)
    With ``frozen`` the image tower is a fixed target (OpenShape's recipe for a pretrained
    open_clip); otherwise both towers learn (offline toy towers)."""

    def __init__(self, image_tower: nn.Module, shape_tower: nn.Module, frozen: bool):
        super().__init__()
        self.image_tower, self.shape_tower, self.frozen = image_tower, shape_tower, frozen
        self.loss_fn = ContrastiveLoss()
        if frozen:
            self.image_tower.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.image_tower.eval()
        return self

    def forward(self, rgba, xyz, rgb):
        pixels = self.image_tower.preprocess_rgba(rgba)  # (B, 3, S, S)
        if self.frozen:
            with torch.no_grad():
                e_i = self.image_tower(pixels)  # (B, D)
        else:
            e_i = self.image_tower(pixels)
        e_s = self.shape_tower(xyz, rgb)  # (B, D)
        return self.loss_fn(e_s, e_i), e_i.detach(), e_s.detach(), self.loss_fn.logit_scale.detach()


class FrozenTowerAligner(nn.Module):
    """The stage-2 training module with a frozen pretrained image tower (OpenShape's recipe): the
    tower's embeddings of every view are computed once before training, so this module holds only
    the shape tower and the temperature -- no tower weights in memory, in the optimiser or in the
    training checkpoint, and no tower forward per step.

    forward(e_i (B, D) unit image embeddings, xyz (B, N, 3), rgb (B, N, 3))
        -> (loss, e_i (B, D), e_s (B, D), logit_scale), like ShapeImageAligner."""

    def __init__(self, shape_tower: nn.Module):
        super().__init__()
        self.shape_tower, self.loss_fn = shape_tower, ContrastiveLoss()

    def forward(self, e_i, xyz, rgb):
        e_s = self.shape_tower(xyz, rgb)  # (B, D)
        return self.loss_fn(e_s, e_i), e_i, e_s.detach(), self.loss_fn.logit_scale.detach()
