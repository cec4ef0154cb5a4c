"""3D-aware cross-attention: low-res latent cells query their own cube of a 3D feature volume.

Paper_notes 2.5 (Eq. 6-11 in a re-implementer's numbering). The compact latent triplane T^l
(r' x r' per plane) loses detail; the high-res feature volume V^n still has it. Each latent cell
(i, j) of a plane attends only to the voxels that project onto it -- not to the whole volume:

    notation      here                 shape
    V^n           volume               (B, C_v, r, r, r)      density-normalised feature volume
    V_d^n         vol_d                (B, C, r'', r'', r'')  Conv3d(V^n, kernel=o, stride=o), o = r / r''
    T^l           latent               (B, 3, C, r', r')      low-res triplane (queries)
    m             cube                 r'' / r'               cube side in the plane, per axis
    A             out - latent         (B, 3, C, r', r')      attention output
    T^e           out                  (B, 3, C, r', r')      T^e = A + T^l (residual)

For the xy plane, cell (i, j) sees the m x m x r'' cube V_d^n[i*m:(i+1)*m, j*m:(j+1)*m, :]: an
m x m patch in the plane, the whole extent of the collapsed axis z. When r'' = r' (m = 1) the cube
is a column. Keys carry a learned positional encoding of their place in the cube (the paper adds
a PE but does not give its form). Queries, keys and values are 1x1 projections; multi-head.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .triplane import COLLAPSED_AXIS, PLANE_AXES


def volume_cubes(vol_d: torch.Tensor, plane: int, latent_res: int) -> torch.Tensor:
    """Group the voxels of ``vol_d`` (B, C, R, R, R) by the latent cell of ``plane`` they project to.

    Returns (B, r', r', m*m*R, C): for cell (i, j), its m x m x R cube, flattened.
    """
    B, C, R = vol_d.shape[:3]
    m = R // latent_res
    a, b = PLANE_AXES[plane]
    v = vol_d.permute(0, 1, 2 + a, 2 + b, 2 + COLLAPSED_AXIS[plane])  # (B, C, A, Bax, collapsed)
    v = v.reshape(B, C, latent_res, m, latent_res, m, R)  # (B, C, i, di, j, dj, k)
    v = v.permute(0, 2, 4, 3, 5, 6, 1)  # (B, i, j, di, dj, k, C)
    return v.reshape(B, latent_res, latent_res, m * m * R, C)


class AwareCrossAttention3D(nn.Module):
    def __init__(self, latent_channels: int, volume_channels: int, volume_res: int,
                 latent_res: int, attn_res: int, heads: int = 4):
        super().__init__()
        assert volume_res % attn_res == 0 and attn_res % latent_res == 0, \
            "need r % r'' == 0 and r'' % r' == 0"
        self.latent_res, self.attn_res, self.heads = latent_res, attn_res, heads
        o = volume_res // attn_res
        c = latent_channels
        self.down = nn.Conv3d(volume_channels, c, kernel_size=o, stride=o)  # V^n -> V_d^n
        self.norm_q, self.norm_kv = nn.GroupNorm(min(8, c), c), nn.LayerNorm(c)
        self.to_q = nn.Conv2d(c, c, 1)
        self.to_kv = nn.Linear(c, 2 * c)
        n_keys = (attn_res // latent_res) ** 2 * attn_res
        # PE of a key's place in its cube, N(0, 0.02^2). A skeleton on the meta device (checkpoint loading
        # builds one first) draws nothing: random ops there import torch._dynamo and sympy (~1.5 s)
        pos = torch.empty(3, n_keys, c)
        self.pos = nn.Parameter(pos if pos.is_meta else torch.randn(3, n_keys, c, device=pos.device) * 0.02)
        self.to_out = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.to_out.weight)  # starts as the identity map T^e = T^l
        nn.init.zeros_(self.to_out.bias)

    def forward(self, latent: torch.Tensor, volume: torch.Tensor, return_weights: bool = False):
        """latent T^l (B, 3, C, r', r'), volume V^n (B, C_v, r, r, r) -> T^e (B, 3, C, r', r')."""
        B, _, C, r, _ = latent.shape
        h, d = self.heads, C // self.heads
        vol_d = self.down(volume)  # (B, C, r'', r'', r'')
        outs, weights = [], []
        for k in range(3):
            # 1. queries: one per latent cell
            q = self.to_q(self.norm_q(latent[:, k]))  # (B, C, r', r')
            q = q.permute(0, 2, 3, 1).reshape(B * r * r, 1, h, d).transpose(1, 2)  # (B r r, h, 1, d)
            # 2. keys/values: the cell's own cube of V_d^n, with its positional encoding
            cube = volume_cubes(vol_d, k, r) + self.pos[k]  # (B, r', r', L, C)
            L = cube.shape[3]
            kv = self.to_kv(self.norm_kv(cube)).reshape(B * r * r, L, 2, h, d)
            key, val = kv.unbind(2)  # (B r r, L, h, d)
            key, val = key.transpose(1, 2), val.transpose(1, 2)  # (B r r, h, L, d)
            # 3. attention inside the cube only
            if return_weights:
                w = torch.softmax(q @ key.transpose(-1, -2) / d ** 0.5, dim=-1)  # (B r r, h, 1, L)
                a = w @ val
                weights.append(w.reshape(B, r, r, h, L))
            else:
                a = F.scaled_dot_product_attention(q, key, val)  # (B r r, h, 1, d)
            a = a.transpose(1, 2).reshape(B, r, r, C).permute(0, 3, 1, 2)  # (B, C, r', r')
            # 4. residual: T^e = A + T^l
            outs.append(latent[:, k] + self.to_out(a))
        out = torch.stack(outs, dim=1)
        return (out, torch.stack(weights, dim=1)) if return_weights else out
