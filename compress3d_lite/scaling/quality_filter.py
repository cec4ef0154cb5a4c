"""The quality filter, a small MLP that scores objects good / bad (docs/paper.md §6): a model that
curates data, trained on stage-2 shape embeddings (so it lives with the stages, and the data
package stays free of models: ``data objaverse --filter`` receives a loaded filter).

Compress3D labelled 2,500 Objaverse models good or bad by hand, trained an MLP classifier on them
and kept the ~100K models it liked. The paper does not say what the classifier sees. Ours sees
the shape embedding of the object's coloured surface points (``inference.embed.embed_points`` with a
stage-2 shape tower, by default the shipped ``embed_course`` one): that input is our choice.

    compress3d-lite data quality-filter train --data DIR --labels labels.csv --out CLS_DIR
    compress3d-lite data objaverse ... --filter CLS_DIR     # objects scoring < 0.5 stay out of index.json

    report = train_filter("data/objaverse", "labels.csv", "runs/quality")
    scores = QualityFilter.load("runs/quality").score(["data/objaverse/objects/x.npz"])  # (N,) in [0, 1]

``labels.csv`` has lines ``uid,label`` with label good/bad or 1/0 (a header line is allowed); the
uid of an object is its index.json ``uid`` (data objaverse) or its file name without ``.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_module, read_config, write_checkpoint
from ..data.io import read_index
from ..inference.embed import embed_points, load_towers
from ..samples import shipped_checkpoint

LABELS = {"good": 1, "1": 1, "bad": 0, "0": 0}
N_POINTS = 512  # surface points per object fed to the shape tower (what embed_course was trained on)
SHIPPED_TAG = "shipped:embed_course"


def _embed_folder(recorded: str) -> Path:
    """The towers' folder recorded in a filter's config: the shipped tag, a path, or (older filters)
    a path relative to the repository root such as ``data_samples/checkpoints/embed_course``."""
    if recorded == SHIPPED_TAG or recorded.replace("\\", "/") == "data_samples/checkpoints/embed_course":
        return shipped_checkpoint("embed_course")
    return Path(recorded)


class QualityError(ValueError):
    """A bad labels file or labelled set; the message is one line naming the file."""


def read_labels(path) -> dict:
    """{uid: 1 (good) or 0 (bad)} from a ``uid,label`` CSV."""
    path = Path(path)
    if not path.is_file():
        raise QualityError(f"{path}: no such labels file")
    labels = {}
    for k, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        cells = [c.strip() for c in line.split("#", 1)[0].split(",")]
        if cells == [""]:
            continue
        if len(cells) != 2 or cells[1].lower() not in LABELS:
            if k == 1 and not labels:  # a header such as "uid,label"
                continue
            raise QualityError(f"{path}: line {k}: expected 'uid,label' with label good/bad or 1/0, got {line.strip()!r}")
        labels[cells[0]] = LABELS[cells[1].lower()]
    if not labels:
        raise QualityError(f"{path}: no labelled objects")
    return labels


def features(shape_tower, paths, n_points: int = N_POINTS, batch: int = 64) -> torch.Tensor:
    """(N, D) unit shape embeddings of object files: a fixed random subset of ``n_points``
    coloured surface points each (the same subset every time)."""
    out = []
    for k in range(0, len(paths), batch):
        pts, cols = [], []
        for p in paths[k:k + batch]:
            with np.load(p, allow_pickle=False) as z:
                points, colors = z["points"], z["colors"]
            pick = np.random.default_rng(0).choice(len(points), n_points, replace=len(points) < n_points)
            pts.append(points[pick]), cols.append(colors[pick])
        out.append(embed_points(shape_tower, np.stack(pts), np.stack(cols)).cpu())
    return torch.cat(out)


def make_mlp(dim: int, hidden: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))


def train_filter(data_dir, labels_csv, out_dir, embed_dir=None, hidden: int = 64, steps: int = 300,
                 val_fraction: float = 0.25, threshold: float = 0.5, seed: int = 0) -> dict:
    """Train the MLP on the labelled objects of ``data_dir`` (a held-out ``val_fraction`` is
    kept for the reported accuracy) and write it to ``out_dir`` (safetensors + config.json)."""
    embed_dir = Path(embed_dir or shipped_checkpoint("embed_course"))
    labels = read_labels(labels_csv)
    files = {e.get("uid") or Path(e["file"]).stem: Path(data_dir) / e["file"] for e in read_index(data_dir)["objects"]}
    uids = [u for u in labels if u in files]
    y = torch.tensor([labels[u] for u in uids], dtype=torch.float32)
    if len(uids) < 4 or y.min() == y.max():
        raise QualityError(f"{labels_csv}: need at least 4 labelled objects of {data_dir} with both labels, "
                           f"found {len(uids)} ({int(y.sum()) if len(uids) else 0} good)")
    _, shape_tower, tower_cfg = load_towers(embed_dir)
    x = features(shape_tower, [files[u] for u in uids])
    rng, val = np.random.default_rng(seed), torch.zeros(len(uids), dtype=torch.bool)
    for label in (0, 1):  # a stratified held-out split: val_fraction of the good and of the bad
        ix = rng.permutation(np.flatnonzero(y.numpy() == label))
        val[ix[:max(1, round(val_fraction * len(ix))) if len(ix) > 1 else 0]] = True
    tr, n_val = ~val, int(val.sum())
    torch.manual_seed(seed)
    mlp = make_mlp(x.shape[1], hidden)
    opt = torch.optim.AdamW(mlp.parameters(), lr=3e-3, weight_decay=1e-2)
    pos_weight = (1 - y[tr]).sum() / y[tr].sum().clamp(min=1)  # balance good and bad
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(mlp(x[tr])[:, 0], y[tr], pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (torch.sigmoid(mlp(x)[:, 0]) >= threshold).float()

    def acc(ix):
        return round(float((pred[ix] == y[ix]).float().mean()), 4)

    report = {"n_labels": len(labels), "n_missing": len(labels) - len(uids), "n_train": len(uids) - n_val, "n_val": n_val,
              "n_good": int(y.sum()), "train_accuracy": acc(tr), "val_accuracy": acc(val),
              "val_majority_baseline": round(max(float(y[val].mean()), 1 - float(y[val].mean())), 4)}
    shipped = shipped_checkpoint("embed_course").resolve()
    embed = embed_dir.resolve()
    write_checkpoint(out_dir, mlp.state_dict(), {
        "kind": "quality_mlp", "model": {"dim": int(x.shape[1]), "hidden": hidden}, "threshold": threshold,
        "features": f"shape embedding of {N_POINTS} coloured surface points (our choice; the paper's are unknown)",
        # the shipped towers are named, not located, so the filter works after any install
        "embed": SHIPPED_TAG if embed == shipped else str(embed),
        "shape_tower_fingerprint": tower_cfg["fingerprint"],
        "data": str(data_dir), "labels": str(labels_csv), "seed": seed, "steps": steps, "report": report})
    return report


class QualityFilter:
    """A trained quality MLP with the shape tower whose embeddings it reads."""

    def __init__(self, mlp, shape_tower, threshold: float, source: str = ""):
        self.mlp, self.shape_tower, self.threshold, self.source = mlp.eval(), shape_tower, threshold, source

    @classmethod
    def load(cls, path) -> "QualityFilter":
        cfg = read_config(path)
        if cfg.get("kind") != "quality_mlp":
            raise CheckpointError(f"{path}: a {cfg.get('kind')!r} checkpoint, not a quality filter")
        mlp = load_module(path, cfg.get("model", {}), lambda d: make_mlp(d["dim"], d["hidden"]), "quality filter")
        embed_dir = _embed_folder(cfg.get("embed", ""))
        _, shape_tower, tower_cfg = load_towers(embed_dir)
        if tower_cfg["fingerprint"] != cfg.get("shape_tower_fingerprint"):
            raise CheckpointError(f"{path}: trained on the embeddings of another shape tower than {embed_dir}")
        return cls(mlp, shape_tower, float(cfg.get("threshold", 0.5)), str(path))

    @torch.no_grad()
    def score(self, paths) -> np.ndarray:
        """(N,) probability of "good" of each object file."""
        if not len(paths):
            return np.zeros(0)
        return torch.sigmoid(self.mlp(features(self.shape_tower, list(paths)))[:, 0]).numpy()
