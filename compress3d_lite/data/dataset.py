"""A torch Dataset over a folder written by ``compress3d-lite data toyshapes`` or ``data import``.

    ds = ObjectDataset("data/toyshapes", n_points=2048, n_occ=4096)
    item = ds[0]   # dict of tensors: points (N, 3), colors (N, 3), occ_points (M, 3),
                   # occ_labels (M,) float, transform (4, 4), category () long (-1: none)
                   # and, with views=True: images (V, 4, H, W) float in [0, 1], depths (V, H, W),
                   # cam2world (V, 4, 4), intrinsics (V, 3, 3)
                   # and, with views="one": image (4, H, W), one view drawn like the points

Random subsets of points and queries are drawn from ``(seed, epoch, index)``, so an epoch is
reproducible and ``set_epoch`` changes the draw (what a resumed training run needs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .io import load_object, read_index
from .toyshapes import CATEGORIES

CATEGORY_NAMES = list(CATEGORIES)


def drawn_view(key, seed: int, n_views: int) -> tuple:
    """(object index, view index) for a sampler key (index or (index, epoch)): the view is drawn
    from (seed, epoch, index), like every other random choice of the data pipeline (the stages'
    datasets of precomputed embeddings use it)."""
    i, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + i)
    return i, int(torch.randint(n_views, (1,), generator=g))


class ObjectDataset(torch.utils.data.Dataset):
    def __init__(self, root, n_points: int | None = None, n_occ: int | None = None,
                 views: bool | str = False, seed: int = 0):
        self.root = Path(root)
        self.index = read_index(self.root)
        self.entries = self.index["objects"]
        self.n_points, self.n_occ, self.views, self.seed = n_points, n_occ, views, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def _subset(self, rng, n_total, n):
        if n is None or n >= n_total:
            return slice(None)
        return np.sort(rng.choice(n_total, size=n, replace=False))

    def __getitem__(self, i) -> dict:
        """``i`` is an index, or an (index, epoch) pair (what the training sampler yields, so
        that the draw does not depend on worker processes seeing ``set_epoch``)."""
        i, epoch = (int(i[0]), int(i[1])) if isinstance(i, (tuple, list)) else (int(i), self.epoch)
        obj = load_object(self.root / self.entries[i]["file"])
        rng = np.random.default_rng([self.seed, epoch, i])
        p = self._subset(rng, len(obj["points"]), self.n_points)
        q = self._subset(rng, len(obj["occ_points"]), self.n_occ)
        category = obj.get("category")
        item = {
            "points": torch.from_numpy(obj["points"][p]),
            "colors": torch.from_numpy(obj["colors"][p]),
            "occ_points": torch.from_numpy(obj["occ_points"][q]),
            "occ_labels": torch.from_numpy(obj["occ_labels"][q].astype(np.float32)),
            "transform": torch.from_numpy(obj["transform"]),
            "category": torch.tensor(CATEGORY_NAMES.index(category) if category in CATEGORY_NAMES else -1),
        }
        if self.views and "images" not in obj:
            raise ValueError(f"{self.root / self.entries[i]['file']}: has no rendered views")
        if self.views == "one":
            v = int(rng.integers(len(obj["images"])))
            item["image"] = torch.from_numpy(obj["images"][v]).permute(2, 0, 1).float() / 255.0
        elif self.views:
            item["images"] = torch.from_numpy(obj["images"]).permute(0, 3, 1, 2).float() / 255.0
            item["depths"] = torch.from_numpy(obj["depths"])
            item["cam2world"] = torch.from_numpy(obj["cam2world"])
            item["intrinsics"] = torch.from_numpy(obj["intrinsics"])
        return item
