"""Reconstruction metrics: volumetric IoU, Chamfer-L1, F-score@0.02, colour PSNR and colour errors.

The paper reports its autoencoder through render losses only (docs/paper.md §8.3: L_rgb, L_mask,
L_depth) and gives no Chamfer/F-score numbers (8.7), so these are the usual field-reconstruction
metrics of the occupancy-network literature, all measured in the [-1, 1]^3 data frame
(docs/design.md §2: objects fit in [-0.9, 0.9]^3, so the longest side is 1.8):

    volumetric IoU   |pred & gt| / |pred | gt| over occupancy at the same query points
    Chamfer-L1       0.5 * (mean_a min_b ||a - b||_2 + mean_b min_a ||b - a||_2)
                     -- Occupancy Networks' "Chamfer-L1": mean *Euclidean* (not squared)
                     nearest-neighbour distance each way, averaged. It is "L1" because the
                     distances are averaged, not squared (Chamfer-L2 averages ||a - b||^2).
    F-score@tau      harmonic mean of precision (share of predicted points closer than tau to
                     the ground truth) and recall (share of ground-truth points closer than tau
                     to the prediction); tau = 0.02 (Tatarchenko et al. 2019, "What do
                     single-view 3D reconstruction networks learn?")
    colour PSNR      10 log10(1 / MSE) of rgb in [0, 1] at ground-truth surface points
    colour error     mean |rgb| (in [0, 1]) at ground-truth surface points, over all of them and
                     per part (each part counted once: small parts are where colour goes wrong),
                     or between two renders from one camera where both cover the pixel

Nearest neighbours come from scipy's cKDTree (exact).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

F_SCORE_TAU = 0.02


def iou(pred_occ, gt_occ) -> float:
    """Volumetric IoU of two boolean occupancy arrays over the same query points, (M,) each.

    Both empty: 1.0 (the prediction is exactly right)."""
    pred, gt = np.asarray(pred_occ, bool).ravel(), np.asarray(gt_occ, bool).ravel()
    if pred.shape != gt.shape:
        raise ValueError(f"occupancy arrays differ in size: {pred.shape} vs {gt.shape}")
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def nn_distances(a, b) -> tuple:
    """Euclidean distance of every point of ``a`` (N, 3) to its nearest point in ``b`` (M, 3),
    and of every point of ``b`` to ``a``: ((N,), (M,))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("nearest-neighbour distances need two non-empty point sets")
    d_ab, _ = cKDTree(b).query(a, k=1)
    d_ba, _ = cKDTree(a).query(b, k=1)
    return d_ab, d_ba


def chamfer_l1(pred_points, gt_points) -> float:
    """0.5 * (accuracy + completeness): mean Euclidean NN distance pred -> gt and gt -> pred."""
    return surface_metrics(pred_points, gt_points)["chamfer_l1"]


def f_score(pred_points, gt_points, tau: float = F_SCORE_TAU) -> tuple:
    """(F, precision, recall) at distance threshold ``tau`` (strict: d < tau)."""
    m = surface_metrics(pred_points, gt_points, tau)
    return m["f_score"], m["precision"], m["recall"]


def surface_metrics(pred_points, gt_points, tau: float = F_SCORE_TAU) -> dict:
    """Chamfer-L1, F-score, precision and recall of two point sets from one pair of KD-tree queries."""
    d_pg, d_gp = nn_distances(pred_points, gt_points)  # (N,), (M,)
    precision, recall = float(np.mean(d_pg < tau)), float(np.mean(d_gp < tau))
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"chamfer_l1": 0.5 * float(d_pg.mean() + d_gp.mean()), "f_score": f,
            "precision": precision, "recall": recall}


def psnr(pred_rgb, gt_rgb, max_value: float = 1.0) -> float:
    """10 log10(max^2 / MSE) over all channels of rgb arrays in [0, max]; inf when identical."""
    pred, gt = np.asarray(pred_rgb, np.float64), np.asarray(gt_rgb, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"colour arrays differ in shape: {pred.shape} vs {gt.shape}")
    mse = np.mean((pred - gt) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(max_value ** 2 / mse))


# ----------------------------------------------------------------------------- embeddings (stage 2-3)


def _sample_colour_errors(pred_rgb, gt_rgb) -> np.ndarray:
    """(n,) mean absolute colour error of each sample, averaged over the channels."""
    return np.abs(np.asarray(pred_rgb, np.float64) - np.asarray(gt_rgb, np.float64)).mean(axis=1)


def part_colour_errors(pred_rgb, gt_rgb, parts) -> dict:
    """{part index: mean absolute colour error of its samples} for the parts present in ``parts`` (n,)."""
    err, parts = _sample_colour_errors(pred_rgb, gt_rgb), np.asarray(parts)
    return {int(k): float(err[parts == k].mean()) for k in np.unique(parts)}


def colour_error(pred_rgb, gt_rgb, parts=None) -> dict:
    """Mean absolute colour error (rgb in [0, 1], averaged over the channels) of samples (n, 3):
    ``colour_err`` over all samples (area-weighted: a big part dominates), and with ``parts`` (n,)
    ``colour_err_parts``, the mean of the per-part errors (each part counts once, however small),
    and ``colour_err_worst_part`` with its part index ``worst_part``."""
    err = _sample_colour_errors(pred_rgb, gt_rgb)  # (n,)
    out = {"colour_err": float(err.mean())}
    if parts is not None:
        per_part = part_colour_errors(pred_rgb, gt_rgb, parts)
        worst = max(per_part, key=per_part.get)
        out.update(colour_err_parts=float(np.mean(list(per_part.values()))), colour_err_worst_part=per_part[worst],
                   worst_part=worst)
    return out


def masked_colour_error(pred_rgba, gt_rgba) -> float | None:
    """Mean absolute rgb error (in [0, 1]) between two RGBA uint8 renders (H, W, 4) from one camera,
    over the pixels both cover (alpha > 0); None when they share no pixel."""
    both = (np.asarray(pred_rgba)[..., 3] > 0) & (np.asarray(gt_rgba)[..., 3] > 0)
    if not both.any():
        return None
    diff = np.abs(np.asarray(pred_rgba, np.float64)[..., :3] - np.asarray(gt_rgba, np.float64)[..., :3]) / 255.0
    return float(diff[both].mean())


def retrieval(queries, gallery, query_categories=None, gallery_categories=None, ks=(1, 5)) -> dict:
    """Cross-modal retrieval: query k must find gallery item k (cosine similarity of unit vectors).

    Returns top-k accuracy for each k (share of queries whose own item ranks in the first k)
    and, with categories, ``category_acc``: share of queries whose top-1 item has the query's
    category (OpenShape / ULIP's retrieval accuracy on classes)."""
    q, g = torch.as_tensor(queries).float(), torch.as_tensor(gallery).float()
    sim = q @ g.t()  # (Q, G)
    own = sim.diagonal()[:, None]
    rank = (sim > own).sum(dim=1)  # 0: the own item is first
    out = {f"top{k}": float((rank < k).float().mean()) for k in ks}
    if query_categories is not None:
        best = sim.argmax(dim=1)
        qc, gc = torch.as_tensor(query_categories), torch.as_tensor(gallery_categories)
        out["category_acc"] = float((gc[best] == qc).float().mean())
    return out
