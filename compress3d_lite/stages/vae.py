"""Stage 1, the triplane VAE (docs/paper.md §2): its presets, its training step and run, how it is
saved and loaded, reconstructing a mesh file through it, and its dry-run setup.

    compress3d-lite train ae --preset course --out runs/vae_course      # ~30 min on 2 CPU cores
    compress3d-lite train ae --preset a100_full --dry-run                # what the paper scale costs
    compress3d-lite reconstruct Duck.glb -o duck_vae.glb                 # the shipped course VAE

The model is ``models/autoencoder.py`` (``TriplaneVAE``, ``AEConfig``). A run writes
``OUT/model`` (weights + config.json with the latent mean/std that stage 4 normalises with).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError, read_config, resolve_folder, write_checkpoint
from ..config import Config, SampleSpec, check_sizes, choose_preset, preset_bounds
from ..data.dataset import ObjectDataset
from ..data.io import load_object, prepare_output_file
from ..data.mesh_import import import_mesh
from ..mesh import MAX_MESH_RES, MESH_FORMATS, MeshingError, extract_mesh, save_mesh
from ..models.autoencoder import AEConfig, TriplaneVAE
from ..samples import shipped_checkpoint
from ..training.loop import TrainConfig, fit, make_accelerator
from ..training.run_folder import claim_run_folder, data_config, prepare_data, resume_point
from ..training.measure import Setup, random_points, without_checkpointing

KIND = TriplaneVAE.kind


# ------------------------------------------------------------------------------------------ presets


@dataclass
class VAEPreset(Config):
    """A VAE run: the architecture and the training run."""

    model: AEConfig
    train: TrainConfig


PRESETS = {
    # CPU, minutes: notebooks, tests and CI
    "lite": VAEPreset(
        AEConfig(point_dim=16, volume_res=16, plane_channels=16, enc_channels=(16, 32), dec_channels=(32, 16),
                 latent_res=8, latent_channels=4, attn_res=8, attn_heads=2, head_hidden=32),
        TrainConfig(steps=200, batch_size=4, n_points=1024, n_occ=2048, n_train=64, log_every=20, ckpt_every=100)),
    # CPU, under ~40 minutes: the shipped checkpoint. Colour weight 2 (the default 1; the paper has no
    # colour-field loss) meets the colour-PSNR target at this size without losing the IoU target
    # (docs/stages.md, "Stage 1").
    "course": VAEPreset(AEConfig(color_weight=2.0), TrainConfig()),
    # one T4, hours
    "colab_t4": VAEPreset(
        AEConfig(point_dim=64, volume_res=64, plane_channels=32, enc_channels=(64, 128), dec_channels=(128, 64),
                 blocks_per_level=2, latent_res=32, latent_channels=16, attn_res=32, head_hidden=128),
        TrainConfig(steps=50_000, batch_size=16, lr=3e-4, n_points=4096, n_occ=8192, n_train=20_000,
                    mixed_precision="fp16", num_workers=2, ckpt_every=2000, log_every=100)),
    # paper scale, 8 x A100, bf16 (docs/paper.md §2.3-2.6, §10: r = 128, latent 3x32x32x32, r'' = 32)
    "a100_full": VAEPreset(
        AEConfig(point_dim=64, pointnet_blocks=5, volume_res=128, plane_channels=32, enc_channels=(32, 64, 128),
                 dec_channels=(128, 64, 32), blocks_per_level=2, latent_res=32, latent_channels=32,
                 attn_res=32, attn_heads=8, head_hidden=128),
        TrainConfig(steps=500_000, batch_size=8, lr=1e-4, n_points=10_000, n_occ=16_384, n_train=0,
                    mixed_precision="bf16", num_workers=8, ckpt_every=5000, log_every=100)),
}


SIZE_BOUNDS = preset_bounds(p.model for p in PRESETS.values())  # what a loaded config.json may ask for


def vae_preset(name: str, model: dict | None = None, train: dict | None = None) -> VAEPreset:
    """A copy of the named preset with validated changes to its AEConfig / TrainConfig."""
    return choose_preset(PRESETS, name, "VAE").override(model=model or {}, train=train or {})


# ------------------------------------------------------------------------------------------ training


def vae_step(mcfg: AEConfig):
    """The VAE's training step ``(model, batch) -> (loss, logs)`` (docs/paper.md §2.6, §2.8): field
    losses + KL, plus the render losses when ``mcfg.render_loss``. batch: points, colors (B, N, 3),
    occ_points (B, M, 3), occ_labels (B, M) (and the views for the render losses)."""
    def step_fn(model, batch):
        views = tuple(batch[k] for k in ("images", "depths", "cam2world", "intrinsics")) if mcfg.render_loss else None
        o = model(batch["points"], batch["colors"], batch["occ_points"], batch["occ_labels"], views=views)
        acc = ((o.occ_logits.detach() > 0) == (batch["occ_labels"] > 0.5)).float().mean()
        return o.loss, {"occ_bce": o.occ_loss.detach(), "color_l1": o.color_loss.detach(), "kl": o.kl.detach(),
                        "occ_acc": acc, **{f"render_{k}": v.detach() for k, v in o.render.items()}}
    return step_fn


@torch.no_grad()
def encode_latents(vae, folder, n_points: int, device, limit: int | None = None, progress: bool = False):
    """Posterior means (N, 3, c', r', r') of the objects of a data folder (epoch 0's point draw),
    the first ``limit`` of them when given."""
    ds = ObjectDataset(folder, n_points=n_points)
    n = len(ds) if limit is None else min(limit, len(ds))
    out = []
    for i in tqdm(range(n), desc="encode", disable=not progress):
        item = ds[i]
        mu, _ = vae.encode(item["points"][None].to(device), item["colors"][None].to(device))
        out.append(mu.cpu())
    return torch.cat(out)


def latent_statistics(mu: torch.Tensor) -> dict:
    """Per-channel mean/std of posterior means (n, 3, c', r', r'): what stage 4 normalises with
    (docs/design.md §3.1); stored in the VAE's config.json as ``latent_stats``."""
    return {"mean": mu.mean(dim=(0, 1, 3, 4)).tolist(), "std": mu.std(dim=(0, 1, 3, 4)).clamp_min(1e-6).tolist(),
            "n_objects": len(mu)}


def train_vae(preset: str, out, data: str | None = None, resume: bool = False, overrides: dict | None = None,
              train_overrides: dict | None = None, half: bool = False, progress: bool = True,
              stop_after: int | None = None, overwrite: bool = False) -> dict:
    """Train (or resume) a triplane VAE; writes ``out/model``. Returns the last log record.

    ``overrides`` / ``train_overrides``: AEConfig / TrainConfig fields. ``stop_after``: stop at that
    step with a training checkpoint, as an interrupted run would (``--resume`` continues exactly)."""
    out = claim_run_folder(out, resume, overwrite, data)  # refuse a finished run's folder unless --overwrite
    p = vae_preset(preset, overrides, train_overrides)
    mcfg, tcfg = p.model, p.train
    start = 0
    if resume:
        start, tcfg, data = resume_point(out, KIND, preset, mcfg.to_dict(), tcfg, train_overrides, data,
                                         release="model")
    accelerator = make_accelerator(tcfg)
    torch.manual_seed(tcfg.seed)
    folder = prepare_data(data, out, tcfg, accelerator, views=4 if mcfg.render_loss else 0)
    dataset = ObjectDataset(folder, n_points=tcfg.n_points, n_occ=tcfg.n_occ, seed=tcfg.seed,
                            views=mcfg.render_loss)
    model = TriplaneVAE(mcfg)
    config = {"kind": KIND, "preset": preset, "model": mcfg.to_dict(), "train": tcfg.to_dict(),
              "data": data_config(folder, dataset)}
    if accelerator.is_main_process:
        n_params = sum(q.numel() for q in model.parameters())
        print(f"train ae: preset {preset}, {n_params / 1e6:.2f}M params, attention {'on' if mcfg.attn else 'off'}, "
              f"{len(dataset)} objects, steps {start} -> {tcfg.steps}, device {accelerator.device}")

    def finalize(net, step, record, ema):
        stats = latent_statistics(encode_latents(net, folder, tcfg.n_points, accelerator.device, limit=64))
        write_checkpoint(out / "model", net.state_dict(), {**config, "step": step, "latent_stats": stats}, half=half)
        print(f"wrote {out / 'model'} (step {step}, final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator, model, dataset, vae_step(mcfg), tcfg, out, config, start, resume, finalize, progress,
               stop_after, desc="train ae")


# ------------------------------------------------------------------------------------------ loading


def load_vae(path, device="cpu", preset: str | None = None):
    """(TriplaneVAE in eval mode, config dict) from a checkpoint folder or Hub repo id. ``preset``
    (optional) must match the checkpoint's preset; any mismatch is a CheckpointError naming it."""
    folder = resolve_folder(path)
    check_sizes(read_config(folder).get("model"), SIZE_BOUNDS, folder / "config.json")  # before building
    model = TriplaneVAE.load(folder, device)
    cfg = model.checkpoint_info
    if preset is not None and cfg.get("preset") != preset:
        raise CheckpointError(f"{path}: made with preset {cfg.get('preset')!r}, not {preset!r}")
    return model, cfg


def latent_stats(cfg: dict, device="cpu"):
    """Per-channel latent mean and std from a VAE (or UNet) config, shaped (1, 1, c', 1, 1)."""
    stats = cfg.get("latent_stats")
    if not stats:
        return None, None
    mean = torch.tensor(stats["mean"], device=device).view(1, 1, -1, 1, 1)
    std = torch.tensor(stats["std"], device=device).view(1, 1, -1, 1, 1)
    return mean, std


# ------------------------------------------------------------------------------------------ reconstruct


DEFAULT_VAE = "vae_course"  # the shipped course VAE (compress3d_lite.samples finds it)
INPUT_FORMATS = (".glb", ".gltf", ".obj", ".ply", ".npz")


class ReconstructError(ValueError):
    """Bad input to ``reconstruct``: the message is one line naming the file."""


def load_points(path, n_points: int, seed: int = 0) -> dict:
    """Coloured surface points of a mesh file or object .npz, in the data frame: {"points" (N, 3),
    "colors" (N, 3) float32, "transform" (4, 4) original -> data frame}. Raises MeshImportError /
    DataFormatError / ReconstructError naming ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise ReconstructError(f"{path}: unsupported input '{path.suffix}' (supported: {', '.join(INPUT_FORMATS)})")
    if suffix == ".npz":
        obj = load_object(path)
        points, colors = obj["points"], obj["colors"]
        if len(points) > n_points:  # a random subset of the size the model was trained on
            keep = np.sort(np.random.default_rng(seed).choice(len(points), n_points, replace=False))
            points, colors = points[keep], colors[keep]
        return {"points": points, "colors": colors, "transform": obj["transform"]}
    # only the surface points are needed: a handful of occupancy queries, no rendered views
    spec = SampleSpec(n_points=n_points, n_uniform=8, n_near=8, views=0)
    example = import_mesh(path, spec, seed=seed)
    return {k: example[k] for k in ("points", "colors", "transform")}


@torch.inference_mode()
def reconstruct_points(model, points, colors, res: int = 128, timings: dict | None = None):
    """(N, 3) points + (N, 3) colours in the data frame -> coloured trimesh in the data frame:
    encode to the posterior mean (deterministic), decode, marching cubes (mesh.py)."""
    timings = {} if timings is None else timings
    device = next(model.parameters()).device
    pts = torch.as_tensor(np.asarray(points, np.float32), device=device)[None]  # (1, N, 3)
    cols = torch.as_tensor(np.asarray(colors, np.float32), device=device)[None]  # (1, N, 3)
    t = time.perf_counter()
    mu, _ = model.encode(pts, cols)  # (1, 3, c', r', r'): the posterior mean
    timings["encode"] = time.perf_counter() - t
    t = time.perf_counter()
    planes = model.decode(mu)  # (1, 3, C, r, r)
    timings["decode"] = time.perf_counter() - t
    return extract_mesh(model, planes, res=res, timings=timings)


def reconstruct(input_path, output, ckpt=None, res: int = 128, seed: int = 0, preset: str | None = None,
                log=print, overwrite: bool = False):
    """``compress3d-lite reconstruct``: checks first, then read -> encode -> decode -> mesh -> the
    input's original frame and scale (the inverse of its stored ``transform``) -> write
    .glb/.ply/.obj atomically. An existing output is refused unless ``overwrite``. Returns (mesh in
    the original frame, timings in seconds)."""
    ckpt = ckpt or shipped_checkpoint(DEFAULT_VAE)
    output = Path(output)
    if output.suffix.lower() not in MESH_FORMATS:
        raise ReconstructError(f"{output}: unsupported output format '{output.suffix}' "
                               f"(supported: {', '.join(MESH_FORMATS)})")
    if not 8 <= res <= MAX_MESH_RES:
        raise ReconstructError(f"--res must be in 8..{MAX_MESH_RES}, got {res}")
    prepare_output_file(output, overwrite, inputs=[input_path])  # before any work: exists, a folder, the input
    timings = {}
    t = time.perf_counter()
    model, cfg = load_vae(ckpt, preset=preset)
    timings["load_checkpoint"] = time.perf_counter() - t
    n_points = int(cfg.get("train", {}).get("n_points", 2048))
    t = time.perf_counter()
    data = load_points(input_path, n_points, seed)
    timings["read_input"] = time.perf_counter() - t
    log(f"reconstruct {input_path} with {ckpt} (preset {cfg.get('preset')}, step {cfg.get('step')}): "
        f"{len(data['points'])} surface points, grid {res}^3")
    try:
        mesh = reconstruct_points(model, data["points"], data["colors"], res, timings)
    except MeshingError as e:
        raise ReconstructError(f"{input_path}: {e}") from None
    t = time.perf_counter()
    mesh = mesh.apply_transform(np.linalg.inv(np.asarray(data["transform"], np.float64)))  # back to the input's frame
    save_mesh(mesh, output)
    timings["write"] = time.perf_counter() - t
    model_time = sum(timings[k] for k in ("encode", "decode", "field", "marching_cubes", "colors"))
    log("timing: " + " | ".join(f"{k} {v:.3f} s" for k, v in timings.items())
        + f" | encode+decode+mesh {model_time:.3f} s")
    lo, hi = mesh.bounds
    log(f"wrote {output}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, in the input's frame "
        f"(bounds {np.round(lo, 3).tolist()} .. {np.round(hi, 3).tolist()})")
    return mesh, timings


# ------------------------------------------------------------------------------------------ dry run


def dry_run_setup(preset: str, meta: bool = False, overrides: dict | None = None):
    """The training module, step and random batches of ``train ae --preset`` (training/measure.py)."""
    p = vae_preset(preset, overrides)
    mcfg, tcfg = p.model, p.train
    if mcfg.render_loss:
        raise ValueError("the dry run does not cover --render-loss (it needs rendered views and cameras)")
    on = without_checkpointing(mcfg)
    with torch.device("meta") if meta else contextlib.nullcontext():
        vae = TriplaneVAE(mcfg)

    def batch(n, g):
        return {**random_points(n, tcfg.n_points, g),
                "occ_points": torch.rand(n, tcfg.n_occ, 3, generator=g) * 2 - 1,
                "occ_labels": (torch.rand(n, tcfg.n_occ, generator=g) < 0.3).float()}

    notes = [f"r = {mcfg.volume_res}, latent 3x{mcfg.latent_channels}x{mcfg.latent_res}x{mcfg.latent_res}, "
             f"r'' = {mcfg.attn_res}, {tcfg.n_points} points + {tcfg.n_occ} occupancy queries per object"]
    return Setup(vae, vae_step(mcfg), batch, tcfg, {"triplane VAE": vae}, TriplaneVAE.checkpointed, on, 1, notes)
