"""Points -> 3D feature volume -> three planes, and reading planes back at query points.

Paper_notes 2.3 (Eq. 3-5 in a re-implementer's numbering):
  1. V: every point spreads its feature to the 8 voxels around it with weights inversely
     proportional to the point-voxel distance;
  2. V^n: each voxel is divided by its total weight, so dense and sparse regions give features of
     the same scale (density normalisation);
  3. T_xy = Conv3d(V^n, kernel=(1, 1, r), stride=(1, 1, r)), and likewise T_xz, T_yz: a learnable
     projection whose kernel spans the whole collapsed axis (3DGen used a plain mean instead).

Conventions: a volume is (B, C, R, R, R) indexed [x, y, z]; voxel i has its centre at
-1 + (i + 0.5) * 2 / R. A triplane is (B, 3, C, R, R) in the order xy, xz, yz; plane k is indexed
by its two axes in that order (xy: [x, y], xz: [x, z], yz: [y, z]).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # in-plane axes of xy, xz, yz
COLLAPSED_AXIS = (2, 1, 0)  # the axis each plane sums over: z, y, x


def scatter_to_volume(xyz: torch.Tensor, feats: torch.Tensor, res: int, eps: float = 1e-3):
    """Inverse-distance splat of point features into a density-normalised volume.

    xyz (B, N, 3) in [-1, 1], feats (B, N, C) -> V^n (B, C, R, R, R) and the weight sum (B, R^3).
    """
    B, N, C = feats.shape
    xyz, feats = xyz.float(), feats.float()  # splat in fp32, also under autocast
    g = (xyz.clamp(-1, 1) + 1) * 0.5 * res - 0.5  # continuous voxel coordinates (B, N, 3)
    base = g.floor()
    vol = feats.new_zeros(B, res ** 3, C)
    wsum = feats.new_zeros(B, res ** 3)
    for corner in range(8):  # the 8 voxel centres around each point
        offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=xyz.device)
        ijk = base + offset  # (B, N, 3)
        valid = ((ijk >= 0) & (ijk < res)).all(-1)  # (B, N)
        w = valid / (torch.linalg.vector_norm((g - ijk) * (2.0 / res), dim=-1) + eps)  # (B, N)
        ijk = ijk.clamp(0, res - 1).long()
        flat = (ijk[..., 0] * res + ijk[..., 1]) * res + ijk[..., 2]  # (B, N)
        vol.scatter_add_(1, flat[..., None].expand(B, N, C), w[..., None] * feats)
        wsum.scatter_add_(1, flat, w)
    vol = vol / wsum.clamp_min(1e-8)[..., None]  # density normalisation: a weighted average
    return vol.transpose(1, 2).reshape(B, C, res, res, res), wsum


class VolumeToPlanes(nn.Module):
    """The learnable projection: one strided Conv3d per plane, kernel over the whole collapsed axis."""

    def __init__(self, c_in: int, c_out: int, res: int):
        super().__init__()
        kernels = [(1, 1, res), (1, res, 1), (res, 1, 1)]  # collapse z, y, x
        self.convs = nn.ModuleList([nn.Conv3d(c_in, c_out, k, stride=k) for k in kernels])

    def forward(self, vol):  # (B, C, R, R, R)
        xy = self.convs[0](vol).squeeze(4)  # (B, C', R, R) over [x, y]
        xz = self.convs[1](vol).squeeze(3)  # (B, C', R, R) over [x, z]
        yz = self.convs[2](vol).squeeze(2)  # (B, C', R, R) over [y, z]
        return torch.stack([xy, xz, yz], dim=1)  # (B, 3, C', R, R)


def sample_triplane(planes: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Bilinear features of each plane at the projections of ``xyz``, concatenated.

    planes (B, 3, C, R, R), xyz (B, M, 3) in [-1, 1] -> (B, M, 3C).
    """
    B, _, C, R, _ = planes.shape
    feats = []
    for k, (a, b) in enumerate(PLANE_AXES):
        # grid_sample's grid is (w, h) = (second plane axis, first plane axis)
        grid = torch.stack([xyz[..., b], xyz[..., a]], dim=-1)[:, :, None]  # (B, M, 1, 2)
        f = F.grid_sample(planes[:, k], grid, mode="bilinear", padding_mode="border", align_corners=False)
        feats.append(f[..., 0].transpose(1, 2))  # (B, M, C)
    return torch.cat(feats, dim=-1)
