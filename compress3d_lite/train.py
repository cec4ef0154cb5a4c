"""One training loop on HF accelerate, with exact resume; the stages plug their step into it.
Stage 1: the triplane VAE; stage 2: the embeddings; stage 3: the diffusion prior; stage 4: the
triplane UNet. Each stage's step function (``ae_step``, ``embed_step``, ``prior_step``,
``diffusion_step``) is module-level, so the dry run (dryrun.py) runs exactly what ``fit`` runs.

    # CPU (the shipped course checkpoint; ~30 min on 2 cores)
    compress3d-lite train ae --preset course --out runs/vae_course
    # what a preset costs, before paying for it
    compress3d-lite train ae --preset a100_full --dry-run
    # one GPU
    compress3d-lite train ae --preset colab_t4 --data data/toyshapes --out runs/vae_t4
    # several GPUs / nodes (paper scale)
    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 -m compress3d_lite.cli train ae \
        --preset a100_full --data data/objaverse --out runs/vae_full

What a run leaves in ``--out``:
    data/         the toy training set, when no --data was given
    checkpoint/   latest training checkpoint: weights + config + trainer/ (optimiser, scheduler,
                  RNG states) -- what --resume continues from, at the same step, with the same
                  data order and the same random draws
    model/        the final weights + config.json with the latent mean/std (for the diffusion stage)
    log.jsonl     one JSON line per logged step

Data order is a pure function of (seed, step): step s of epoch e reads a fixed slice of a
permutation drawn from (seed, e), and each object's point/query subset is drawn from
(seed, e, index). So a resumed run reads exactly what the uninterrupted run would have read.
Under several processes each rank reads its share of the global batch (``batch_size`` per
process), logs are averaged over the ranks, the main process alone writes files, and every
rank's RNG state goes into the training checkpoint, so a multi-process resume is exact too.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from .checkpoint import read_config, write_checkpoint
from .config import TrainConfig, ae_preset


class TrainingError(RuntimeError):
    """A run that cannot go on (NaN loss, incompatible resume); the message says why."""


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps ``start`` .. ``steps - 1``, this process's share of the global batch as
    (index, epoch) pairs. Pure function of (seed, step): resuming reproduces the order."""

    def __init__(self, n_items, global_batch, seed, start, steps, rank=0, world=1):
        self.n, self.gb, self.seed, self.start, self.steps = n_items, global_batch, seed, start, steps
        self.rank, self.world = rank, world
        self.per_epoch = max(1, n_items // global_batch)  # drop the ragged end of an epoch

    def batch(self, step):
        epoch, k = divmod(step, self.per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        if self.n < self.gb:  # tiny datasets: repeat the permutation
            perm = perm.repeat(math.ceil(self.gb / self.n))
        idx = perm[k * self.gb:(k + 1) * self.gb].tolist()
        share = idx[self.rank::self.world]
        return [(i, epoch) for i in share]

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield self.batch(step)

    def __len__(self):
        return max(0, self.steps - self.start)


def lr_lambda(tcfg: TrainConfig):
    """Linear warm-up, then cosine decay to 10% of the peak."""
    def f(step):
        if step < tcfg.warmup_steps:
            return (step + 1) / max(1, tcfg.warmup_steps)
        t = (step - tcfg.warmup_steps) / max(1, tcfg.steps - tcfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def prepare_data(data: str | None, out: Path, tcfg: TrainConfig, accelerator, views: int = 0,
                 resolution: int = 64) -> Path:
    """The training folder: ``data`` if given, else a toy set generated once into out/data
    (with ``views`` rendered views per object at ``resolution`` px when the stage needs them)."""
    from .data.io import read_index

    if data:
        index = read_index(data)  # a clear error now rather than in a worker later
        if views and not (index.get("spec") or {}).get("views"):
            raise TrainingError(f"{data}: this stage needs rendered views and the data set has none; "
                                "make it with --views 4 or more")
        return Path(data)
    folder = out / "data"
    if accelerator.is_main_process and not (folder / "index.json").exists():
        from .config import SampleSpec
        from .data.toyshapes import write_toyshapes

        spec = SampleSpec(n_points=max(4096, tcfg.n_points), n_uniform=max(8192, tcfg.n_occ // 2),
                          n_near=max(8192, tcfg.n_occ // 2), views=views, resolution=resolution)
        print(f"no --data given: generating {tcfg.n_train} toy objects (seed {tcfg.seed}) into {folder}")
        write_toyshapes(tcfg.n_train, folder, spec, seed=tcfg.seed, workers=2)
    accelerator.wait_for_everyone()
    return folder


def compute_latent_stats(model, dataset, n: int, device) -> dict:
    """Per-channel mean/std of the posterior means over ``n`` objects (docs/design.md §3)."""
    mus = []
    with torch.no_grad():
        for i in range(min(n, len(dataset))):
            item = dataset[i]
            mu, _ = model.encode(item["points"][None].to(device), item["colors"][None].to(device))
            mus.append(mu)
    mu = torch.cat(mus)  # (n, 3, c', r', r')
    return {"mean": mu.mean(dim=(0, 1, 3, 4)).tolist(), "std": mu.std(dim=(0, 1, 3, 4)).clamp_min(1e-6).tolist(),
            "n_objects": len(mus)}


RUNTIME_FIELDS = ("grad_checkpoint",)  # model-config fields that change memory/speed, never the maths


def model_identity(cfg):
    """A model config without its runtime-only fields (nested dicts too): what must agree between
    a checkpoint and the run that resumes it. Configs written before a runtime field existed
    (e.g. grad_checkpoint) compare equal to today's."""
    if isinstance(cfg, dict):
        return {k: model_identity(v) for k, v in cfg.items() if k not in RUNTIME_FIELDS}
    return cfg


def resume_point(out: Path, kind: str, preset: str, model_cfg: dict, tcfg: TrainConfig) -> tuple:
    """(start step, TrainConfig) to continue ``out/checkpoint``; refuses another kind/preset/model."""
    ckpt_dir = out / "checkpoint"
    if not ckpt_dir.exists():
        raise TrainingError(f"{ckpt_dir}: nothing to resume from (run without --resume first)")
    saved = read_config(ckpt_dir)
    if (saved.get("kind") != kind or saved.get("preset") != preset
            or model_identity(saved.get("model")) != model_identity(model_cfg)):
        raise TrainingError(f"{ckpt_dir}: was trained as a {saved.get('kind')!r} with preset {saved.get('preset')!r} "
                            "and another model config; resume with the same options or use a new --out")
    return int(saved["step"]), TrainConfig(**{**saved["train"], "steps": tcfg.steps})


def make_optimizer(model, tcfg: TrainConfig) -> tuple:
    """(trainable parameters, AdamW, warm-up/cosine LambdaLR) of a model: what every stage trains with."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    return params, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg))


def backward(accelerator, loss, optimizer) -> None:
    """Fresh gradients of ``loss`` (accelerate: loss scaling under fp16, DDP all-reduce)."""
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)


def update(accelerator, optimizer, scheduler, params, grad_clip: float) -> None:
    """Gradient clipping, the AdamW step, the learning-rate schedule. ``fit`` and the dry run
    (compress3d_lite.dryrun) share ``backward`` and ``update``."""
    if grad_clip:
        accelerator.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()


def _mean_over_processes(accelerator, loss, logs: dict) -> tuple:
    """(loss, logs) averaged over the processes (the numbers of the global batch); as is with one."""
    if accelerator.num_processes == 1:
        return loss.item(), {k: float(v) for k, v in logs.items()}
    names = list(logs)
    values = torch.stack([loss.detach().float()] + [torch.as_tensor(logs[k], device=loss.device).float()
                                                     for k in names])
    values = accelerator.reduce(values, "mean").tolist()
    return values[0], dict(zip(names, values[1:]))


def fit(accelerator, model, dataset, step_fn, tcfg: TrainConfig, out: Path, config: dict, start: int = 0,
        resume: bool = False, finalize=None, progress: bool = True, stop_after: int | None = None,
        desc: str = "train") -> dict:
    """The one training loop of every stage.

    ``step_fn(model, batch) -> (loss, {name: tensor})`` is the stage's step; the loop does the
    rest: AdamW + warm-up/cosine schedule over the trainable parameters, accelerate (devices,
    processes, mixed precision), the (seed, step) data order, gradient clipping, a stop on a
    non-finite loss, ``log.jsonl``, atomic training checkpoints in ``out/checkpoint`` (with the
    trainer state for an exact ``resume``), and at the end ``finalize(unwrapped_model, step)``
    on the main process (which writes the stage's release folder)."""
    from tqdm.auto import tqdm

    params, optimizer, scheduler = make_optimizer(model, tcfg)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ckpt_dir = out / "checkpoint"
    if resume:
        accelerator.load_state(str(ckpt_dir / "trainer"))
    sampler = StepBatchSampler(len(dataset), tcfg.batch_size * accelerator.num_processes, tcfg.seed, start,
                               tcfg.steps, accelerator.process_index, accelerator.num_processes)
    # its own generator: a DataLoader otherwise draws its worker seed from the global RNG, which
    # would shift the model's sampling noise of a resumed run by one draw
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=tcfg.num_workers,
                                         generator=torch.Generator().manual_seed(tcfg.seed))

    def save(step):
        # every process's RNG state goes into trainer/ (random_states_<rank>.pkl), so that a resumed
        # multi-process run draws the same noise on every rank: the other ranks stage theirs first
        # (a shared file system across nodes is assumed; without one those ranks resume with fresh RNG)
        staging = out / ".rng_staging"
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            accelerator.save_state(str(staging))  # on a non-main rank: its RNG state only
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            def trainer(d):
                accelerator.save_state(str(d))
                for f in sorted(staging.glob("random_states_*.pkl")):
                    shutil.copy(f, d / f.name)

            state = accelerator.unwrap_model(model).state_dict()
            write_checkpoint(ckpt_dir, state, {**config, "step": step}, extra_dirs={"trainer": trainer})
            shutil.rmtree(staging, ignore_errors=True)
        accelerator.wait_for_everyone()

    log_file = out / "log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    model.train()
    record, t0, step = {}, time.time(), start
    bar = tqdm(total=tcfg.steps, initial=start, desc=desc, disable=not (progress and accelerator.is_main_process))
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        loss, logs = step_fn(model, batch)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at step {step}; stopping. The last good checkpoint "
                                f"is {ckpt_dir} (step {read_config(ckpt_dir)['step'] if ckpt_dir.exists() else 'none'}); "
                                "lower the learning rate and --resume")
        backward(accelerator, loss, optimizer)
        update(accelerator, optimizer, scheduler, params, tcfg.grad_clip)
        step += 1
        bar.update(1)
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            mean_loss, mean_logs = _mean_over_processes(accelerator, loss, logs)
            record = {"step": step, "loss": mean_loss, **mean_logs,
                      "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - t0, 1)}
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if accelerator.is_main_process:
                with open(log_file, "a") as f:
                    f.write(json.dumps(record) + "\n")
        if step % tcfg.ckpt_every == 0 and step < tcfg.steps:
            save(step)
        if stop_after is not None and step >= stop_after and step < tcfg.steps:
            save(step)
            bar.close()
            return record
    bar.close()
    save(step)
    if accelerator.is_main_process and finalize is not None:
        finalize(accelerator.unwrap_model(model).eval(), step, record)
    return record


def _accelerator(tcfg: TrainConfig):
    from accelerate import Accelerator

    return Accelerator(mixed_precision=tcfg.mixed_precision, cpu=not torch.cuda.is_available())


def _data_config(folder, dataset) -> dict:
    return {"folder": str(folder), "n_objects": len(dataset), "spec": dataset.index.get("spec"),
            "generator": dataset.index.get("generator"), "seed": dataset.index.get("seed")}


# ----------------------------------------------------------------------------------------- stage 1


def ae_step(mcfg):
    """The VAE's training step ``(model, batch) -> (loss, logs)`` for an AEConfig (docs/paper.md §2.6, §2.8): field losses + KL, plus the render losses when ``mcfg.render_loss``. batch: points,
    colors (B, N, 3), occ_points (B, M, 3), occ_labels (B, M) (and the views for render losses)."""
    def step_fn(model, batch):
        views = tuple(batch[k] for k in ("images", "depths", "cam2world", "intrinsics")) if mcfg.render_loss else None
        o = model(batch["points"], batch["colors"], batch["occ_points"], batch["occ_labels"], views=views)
        acc = ((o.occ_logits.detach() > 0) == (batch["occ_labels"] > 0.5)).float().mean()
        return o.loss, {"occ_bce": o.occ_loss.detach(), "color_l1": o.color_loss.detach(), "kl": o.kl.detach(),
                        "occ_acc": acc, **{f"render_{k}": v.detach() for k, v in o.render.items()}}
    return step_fn


def train_ae(preset: str, out, data: str | None = None, resume: bool = False, overrides: dict | None = None,
             train_overrides: dict | None = None, half: bool = False, progress: bool = True,
             stop_after: int | None = None) -> dict:
    """Train (or resume) a triplane VAE. Returns the last log record.

    ``stop_after``: stop at that step with a training checkpoint, as an interrupted run would
    (``--resume`` then continues exactly; used by the tests and for time-boxed sessions)."""
    from .data.dataset import ObjectDataset
    from .models import TriplaneVAE

    out = Path(out)
    mcfg, tcfg = ae_preset(preset)
    for k, v in (overrides or {}).items():
        setattr(mcfg, k, v)
    for k, v in (train_overrides or {}).items():
        setattr(tcfg, k, v)
    start = 0
    if resume:
        start, tcfg = resume_point(out, "triplane_vae", preset, mcfg.to_dict(), tcfg)
    accelerator = _accelerator(tcfg)
    torch.manual_seed(tcfg.seed)
    folder = prepare_data(data, out, tcfg, accelerator, views=4 if mcfg.render_loss else 0)
    dataset = ObjectDataset(folder, n_points=tcfg.n_points, n_occ=tcfg.n_occ, seed=tcfg.seed,
                            views=mcfg.render_loss)
    model = TriplaneVAE(mcfg)
    config = {"kind": "triplane_vae", "preset": preset, "model": mcfg.to_dict(), "train": tcfg.to_dict(),
              "data": _data_config(folder, dataset)}
    if accelerator.is_main_process:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"train ae: preset {preset}, {n_params / 1e6:.2f}M params, attention {'on' if mcfg.attn else 'off'}, "
              f"{len(dataset)} objects, steps {start} -> {tcfg.steps}, device {accelerator.device}")

    def finalize(net, step, record):
        stats = compute_latent_stats(net, ObjectDataset(folder, n_points=tcfg.n_points), 64, accelerator.device)
        write_checkpoint(out / "model", net.state_dict(), {**config, "step": step, "latent_stats": stats}, half=half)
        print(f"wrote {out / 'model'} (step {step}, final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator, model, dataset, ae_step(mcfg), tcfg, out, config, start, resume, finalize, progress,
               stop_after, desc="train ae")


# ----------------------------------------------------------------------------------------- stage 2


class FrozenTowerAligner(torch.nn.Module):
    """Stage 2 with a frozen pretrained image tower (OpenShape's recipe): the tower's embeddings of
    every view are computed once before training (``embed.embed_folder``), so the training module holds
    only the shape tower and the temperature -- no tower weights in memory, in the optimiser or in
    the training checkpoint, and no tower forward per step.

    forward(e_i (B, D) unit image embeddings, xyz (B, N, 3), rgb (B, N, 3))
        -> (loss, e_i (B, D), e_s (B, D), logit_scale), like ShapeImageAligner."""

    def __init__(self, shape_tower: torch.nn.Module):
        from .models.contrastive import ContrastiveLoss

        super().__init__()
        self.shape_tower, self.loss_fn = shape_tower, ContrastiveLoss()

    def forward(self, e_i, xyz, rgb):
        e_s = self.shape_tower(xyz, rgb)  # (B, D)
        return self.loss_fn(e_s, e_i), e_i, e_s.detach(), self.loss_fn.logit_scale.detach()


class PointsAndViewEmbedding(torch.utils.data.Dataset):
    """An object's points/colours (drawn as in ObjectDataset) and the precomputed image embedding
    of one of its views (drawn from (seed, epoch, index), like the prior's pairs)."""

    def __init__(self, objects, e_i, seed: int = 0):
        self.objects, self.e_i, self.seed = objects, e_i, seed  # ObjectDataset, (N, V, D)

    def __len__(self):
        return len(self.objects)

    def __getitem__(self, key):
        i, v = drawn_view(key, self.seed, self.e_i.shape[1])
        item = self.objects[key]
        return {"points": item["points"], "colors": item["colors"], "e_i": self.e_i[i, v]}


def embed_step(model, batch):
    """The towers' training step: InfoNCE between the shape embeddings of ``points``/``colors``
    (B, N, 3) and the image embeddings of one view per object -- the RGBA view ``image``
    (B, 4, H, W) through a tower trained jointly, or the precomputed ``e_i`` (B, D) of a frozen one."""
    first = batch["e_i"] if "e_i" in batch else batch["image"]
    loss, e_i, e_s, scale = model(first, batch["points"], batch["colors"])
    acc = ((e_s @ e_i.t()).argmax(dim=1) == torch.arange(len(e_s), device=e_s.device)).float().mean()
    return loss, {"batch_top1": acc, "temperature": 1 / scale.exp()}


def train_embed(preset: str, out, data: str | None = None, resume: bool = False, image_tower: str | None = None,
                train_overrides: dict | None = None, half: bool = False, progress: bool = True,
                stop_after: int | None = None) -> dict:
    """Align a shape tower to an image tower with InfoNCE (docs/paper.md §3; OpenShape's recipe).

    Presets with a pretrained tower (``colab_t4``, ``a100_full``) freeze it and train the shape
    tower only: the tower embeds every view once (cached in ``out/image_embeddings.safetensors``)
    and is then dropped. ``lite`` and ``course`` train a small open_clip ViT from scratch jointly
    with the shape tower on toy renders (offline). Writes ``out/shape_tower`` and, for a tower
    trained here, ``out/image_tower``; each records the identity of the image tower (docs/design.md §6)."""
    from .config import IMAGE_TOWERS, embed_preset
    from .embed import embed_folder
    from .data.dataset import ObjectDataset
    from .models.contrastive import ShapeImageAligner
    from .models.image_tower import ImageTower
    from .models.shape_tower import ShapeTower

    out = Path(out)
    tower_cfg, frozen, shape_cfg, tcfg = embed_preset(preset)
    if image_tower is not None:  # another tower by name (e.g. vit_b32 for the course shape tower)
        if image_tower not in IMAGE_TOWERS:
            raise TrainingError(f"unknown image tower {image_tower!r}; choose from {', '.join(IMAGE_TOWERS)}")
        tower_cfg = IMAGE_TOWERS[image_tower]
        frozen = tower_cfg.pretrained is not None
    shape_cfg.embed_dim = tower_cfg.embed_dim
    for k, v in (train_overrides or {}).items():
        setattr(tcfg, k, v)
    model_cfg = {"image_tower": tower_cfg.to_dict(), "frozen": frozen, "shape_tower": shape_cfg.to_dict()}
    start = 0
    if resume:
        start, tcfg = resume_point(out, "embed_training", preset, model_cfg, tcfg)
    accelerator = _accelerator(tcfg)
    torch.manual_seed(tcfg.seed)
    tower = ImageTower.pretrained(tower_cfg) if tower_cfg.pretrained else ImageTower(tower_cfg)
    identity, n_img = tower.identity(), sum(p.numel() for p in tower.parameters())
    folder = prepare_data(data, out, tcfg, accelerator, views=8, resolution=max(64, tower_cfg.image_size))
    if frozen:  # embed every view once with the fixed tower, then train without it
        objects = ObjectDataset(folder, n_points=tcfg.n_points, n_occ=0, seed=tcfg.seed)
        emb = cached_tensors(out / "image_embeddings.safetensors", accelerator,
                             lambda: {"e_i": embed_folder(tower.to(accelerator.device).eval(), None, folder, 1,
                                                           progress)["e_i"]})
        tower = None  # free its memory: training never needs it again
        dataset = PointsAndViewEmbedding(objects, emb["e_i"], seed=tcfg.seed)
        model = FrozenTowerAligner(ShapeTower(shape_cfg))
    else:
        objects = dataset = ObjectDataset(folder, n_points=tcfg.n_points, n_occ=0, seed=tcfg.seed, views="one")
        model = ShapeImageAligner(tower, ShapeTower(shape_cfg), frozen)
    config = {"kind": "embed_training", "preset": preset, "model": model_cfg, "train": tcfg.to_dict(),
              "data": _data_config(folder, objects)}
    if accelerator.is_main_process:
        n_shape = sum(p.numel() for p in model.shape_tower.parameters())
        how = (f"frozen, embeddings of all {emb['e_i'].shape[1]} views precomputed" if frozen
               else "trained from scratch")
        print(f"train embed: preset {preset}, image tower {tower_cfg.name} ({n_img / 1e6:.2f}M params, {how}), "
              f"shape tower {n_shape / 1e6:.2f}M params, {len(dataset)} objects, steps {start} -> {tcfg.steps}, "
              f"device {accelerator.device}")

    def finalize(net, step, record):
        common = {"preset": preset, "train": tcfg.to_dict(), "data": config["data"], "step": step}
        if not frozen:
            write_checkpoint(out / "image_tower", net.image_tower.state_dict(),
                             {"kind": "image_tower", "model": tower_cfg.to_dict(),
                              "identity": net.image_tower.identity(), **common}, half=half)
        write_checkpoint(out / "shape_tower", net.shape_tower.state_dict(),
                         {"kind": "shape_tower", "model": shape_cfg.to_dict(),
                          "image_tower": identity if frozen else net.image_tower.identity(),
                          "temperature": net.loss_fn.temperature, **common}, half=half)
        print(f"wrote {out / 'shape_tower'}{'' if frozen else ' and ' + str(out / 'image_tower')} (step {step}, "
              f"final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator, model, dataset, embed_step, tcfg, out, config, start, resume, finalize, progress,
               stop_after, desc="train embed")


# ----------------------------------------------------------------------------------------- stage 3


def drawn_view(key, seed: int, n_views: int) -> tuple:
    """(object index, view index) for a sampler key (index or (index, epoch)): the view is drawn
    from (seed, epoch, index), like every other random choice of the data pipeline."""
    i, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
    v = int(torch.randint(n_views, (1,), generator=torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + i)))
    return i, v


def cached_tensors(cache: Path, accelerator, compute) -> dict:
    """``compute()`` (a dict of tensors) once per run folder: loaded from ``cache`` when it
    exists, else computed and written there atomically by the main process."""
    from safetensors.torch import load_file, save_file

    if cache.exists():
        return load_file(str(cache))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tensors = compute()
    if accelerator.is_main_process:
        tmp = cache.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(cache)
    return tensors


class EmbeddingPairs(torch.utils.data.Dataset):
    """(shape embedding, image embedding of one view) per object; the view is drawn from
    (seed, epoch, index) like every other random choice of the data pipeline."""

    def __init__(self, e_s, e_i, seed: int = 0):
        self.e_s, self.e_i, self.seed = e_s, e_i, seed  # (N, D), (N, V, D)

    def __len__(self):
        return len(self.e_s)

    def __getitem__(self, key):
        i, v = drawn_view(key, self.seed, self.e_i.shape[1])
        return {"e_s": self.e_s[i], "e_i": self.e_i[i, v]}


def prior_step(model, batch):
    """The prior's training step: batch e_s (B, D), e_i (B, D) unit vectors -> (loss, {})."""
    return model(batch["e_s"], batch["e_i"]), {}


class PriorObjective(torch.nn.Module):
    """forward(e_s, e_i) -> the prior's diffusion loss (a module, so accelerate/DDP can wrap it)."""

    def __init__(self, prior, scheduler):
        super().__init__()
        self.prior, self.scheduler = prior, scheduler

    def forward(self, e_s, e_i):
        return self.prior.loss(e_s, e_i, self.scheduler)


def train_prior(preset: str, out, embed: str, data: str | None = None, resume: bool = False,
                train_overrides: dict | None = None, half: bool = False, progress: bool = True,
                stop_after: int | None = None) -> dict:
    """Train the diffusion prior e_i -> e_s (docs/paper.md §4) on embeddings of a data set made by
    the towers in ``embed`` (a ``train embed`` output folder). The embeddings are computed once
    and cached in ``out/embeddings.safetensors``. Writes ``out/prior``."""
    from .checkpoint import load_towers
    from .config import DiffusionConfig, prior_preset
    from .diffusion import make_scheduler
    from .embed import embed_folder
    from .models.prior import DiffusionPrior

    out = Path(out)
    pcfg, tcfg = prior_preset(preset)
    for k, v in (train_overrides or {}).items():
        setattr(tcfg, k, v)
    dcfg = DiffusionConfig()
    accelerator = _accelerator(tcfg)
    tower, shape_tower, shape_cfg = load_towers(embed, device=accelerator.device)
    if pcfg.embed_dim != tower.cfg.embed_dim:
        pcfg.embed_dim = tower.cfg.embed_dim  # the prior lives in the towers' space
    model_cfg = {"prior": pcfg.to_dict(), "diffusion": dcfg.to_dict()}
    start = 0
    if resume:
        start, tcfg = resume_point(out, "prior_training", preset, model_cfg, tcfg)
    torch.manual_seed(tcfg.seed)
    # the prior learns on the objects the towers learned on, unless told otherwise
    folder = Path(data) if data else Path(shape_cfg["data"]["folder"])
    emb = cached_tensors(out / "embeddings.safetensors", accelerator, lambda: embed_folder(
        tower, shape_tower, folder, n_points=shape_cfg["train"]["n_points"], progress=progress))
    dataset = EmbeddingPairs(emb["e_s"], emb["e_i"], seed=tcfg.seed)
    prior = DiffusionPrior(pcfg, dcfg)
    model = PriorObjective(prior, make_scheduler(dcfg, "ddpm"))
    identity = tower.identity()
    config = {"kind": "prior_training", "preset": preset, "model": model_cfg, "train": tcfg.to_dict(),
              "data": {"folder": str(folder), "n_objects": len(dataset), "views": int(emb["e_i"].shape[1])},
              "image_tower": identity}
    if accelerator.is_main_process:
        n_params = sum(p.numel() for p in prior.parameters())
        print(f"train prior: preset {preset}, {n_params / 1e6:.2f}M params, image tower {identity['name']}, "
              f"{len(dataset)} objects x {emb['e_i'].shape[1]} views, steps {start} -> {tcfg.steps}, "
              f"device {accelerator.device}")

    def finalize(net, step, record):
        write_checkpoint(out / "prior", net.prior.state_dict(),
                         {"kind": "diffusion_prior", "preset": preset, "model": pcfg.to_dict(),
                          "diffusion": dcfg.to_dict(), "image_tower": identity,
                          "shape_tower": shape_cfg.get("fingerprint"), "train": tcfg.to_dict(),
                          "data": config["data"], "step": step}, half=half)
        print(f"wrote {out / 'prior'} (step {step}, final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator, model, dataset, prior_step, tcfg, out, config, start, resume, finalize, progress,
               stop_after, desc="train prior")


# ----------------------------------------------------------------------------------------- stage 4


class LatentTriples(torch.utils.data.Dataset):
    """(normalised VAE latent, image embedding of one view, shape embedding) per object."""

    def __init__(self, latents, e_i, e_s, seed: int = 0):
        self.z, self.e_i, self.e_s, self.seed = latents, e_i, e_s, seed  # (N, 3, c', r', r'), (N, V, D), (N, D)

    def __len__(self):
        return len(self.z)

    def __getitem__(self, key):
        i, v = drawn_view(key, self.seed, self.e_i.shape[1])
        return {"z": self.z[i], "e_i": self.e_i[i, v], "e_s": self.e_s[i]}


class DiffusionObjective(torch.nn.Module):
    """forward(z, e_i, e_s) -> the UNet's diffusion loss, each condition dropped with p = cond_drop
    independently (a module, so accelerate/DDP can wrap it)."""

    def __init__(self, unet, scheduler):
        super().__init__()
        self.unet, self.scheduler = unet, scheduler

    def forward(self, z, e_i, e_s):
        from .diffusion import diffusion_loss

        p = self.unet.cfg.cond_drop
        drop_i = torch.rand(z.shape[0], device=z.device) < p
        drop_s = torch.rand(z.shape[0], device=z.device) < p
        return diffusion_loss(lambda x, t: self.unet(x, t, e_i, e_s, drop_i, drop_s), z, self.scheduler, "l2")


def diffusion_step(model, batch):
    """The UNet's training step: batch z (B, 3, c', r', r'), e_i (B, D), e_s (B, D) -> (loss, {})."""
    return model(batch["z"], batch["e_i"], batch["e_s"]), {}


@torch.no_grad()
def encode_latents(vae, folder, n_points: int, device, progress: bool = True) -> torch.Tensor:
    """Posterior means (N, 3, c', r', r') of every object of a data folder (epoch 0's point draw)."""
    from tqdm.auto import tqdm

    from .data.dataset import ObjectDataset

    ds = ObjectDataset(folder, n_points=n_points)
    out = []
    for i in tqdm(range(len(ds)), desc="encode", disable=not progress):
        item = ds[i]
        mu, _ = vae.encode(item["points"][None].to(device), item["colors"][None].to(device))
        out.append(mu.cpu())
    return torch.cat(out)


def train_diffusion(preset: str, out, vae: str, embed: str, data: str | None = None, resume: bool = False,
                    train_overrides: dict | None = None, half: bool = False, progress: bool = True,
                    stop_after: int | None = None, overrides: dict | None = None) -> dict:
    """Train the triplane UNet (docs/paper.md §5) on normalised VAE latents of a data set, conditioned
    on the towers' embeddings (image: one random view; shape: the ground-truth points). Latents and
    embeddings are computed once and cached in ``out/latents.safetensors``. Writes ``out/unet``,
    whose config records the VAE, the image tower and the shape tower it belongs to."""
    from .checkpoint import latent_stats, load_towers, load_vae
    from .config import DiffusionConfig, diffusion_preset
    from .diffusion import make_scheduler
    from .embed import embed_folder
    from .models.image_tower import fingerprint
    from .models.triplane_unet import TriplaneUNet

    out = Path(out)
    ucfg, tcfg = diffusion_preset(preset)
    for k, v in (overrides or {}).items():  # UNetConfig fields, e.g. grad_checkpoint
        setattr(ucfg, k, v)
    for k, v in (train_overrides or {}).items():
        setattr(tcfg, k, v)
    accelerator = _accelerator(tcfg)
    vae_model, vae_cfg = load_vae(vae, device=accelerator.device)
    tower, shape_tower, shape_cfg = load_towers(embed, device=accelerator.device)
    mean, std = latent_stats(vae_cfg, accelerator.device)
    if mean is None:
        raise TrainingError(f"{vae}: has no latent_stats (a training checkpoint?); use the final model/ folder")
    # the UNet lives in the VAE's latent space and the towers' embedding space
    ucfg.latent_channels, ucfg.latent_res = vae_model.cfg.latent_channels, vae_model.cfg.latent_res
    ucfg.embed_dim = tower.cfg.embed_dim
    dcfg = DiffusionConfig(prediction_type="v_prediction")
    model_cfg = {"unet": ucfg.to_dict(), "diffusion": dcfg.to_dict()}
    start = 0
    if resume:
        start, tcfg = resume_point(out, "diffusion_training", preset, model_cfg, tcfg)
    torch.manual_seed(tcfg.seed)
    folder = Path(data) if data else Path(shape_cfg["data"]["folder"])
    saved = cached_tensors(out / "latents.safetensors", accelerator, lambda: {
        "mu": encode_latents(vae_model, folder, int(vae_cfg["train"]["n_points"]), accelerator.device, progress),
        **embed_folder(tower, shape_tower, folder, n_points=shape_cfg["train"]["n_points"], progress=progress)})
    z = (saved["mu"] - mean[0].cpu()) / std[0].cpu()  # (N, 3, c', r', r'), about unit variance per channel
    dataset = LatentTriples(z, saved["e_i"], saved["e_s"], seed=tcfg.seed)
    unet = TriplaneUNet(ucfg)
    model = DiffusionObjective(unet, make_scheduler(dcfg, "ddpm"))
    links = {"vae": {"preset": vae_cfg.get("preset"), "weights": fingerprint(vae_model.state_dict())},
             "image_tower": tower.identity(), "shape_tower": shape_cfg.get("fingerprint")}
    config = {"kind": "diffusion_training", "preset": preset, "model": model_cfg, "train": tcfg.to_dict(),
              "data": {"folder": str(folder), "n_objects": len(dataset), "views": int(saved["e_i"].shape[1])},
              **links}
    if accelerator.is_main_process:
        n_params = sum(p.numel() for p in unet.parameters())
        print(f"train diffusion: preset {preset}, {n_params / 1e6:.2f}M params, latent {tuple(z.shape[1:])}, "
              f"{len(dataset)} objects x {saved['e_i'].shape[1]} views, steps {start} -> {tcfg.steps}, "
              f"device {accelerator.device}")

    def finalize(net, step, record):
        write_checkpoint(out / "unet", net.unet.state_dict(),
                         {"kind": "triplane_unet", "preset": preset, "model": ucfg.to_dict(), "diffusion": dcfg.to_dict(),
                          **links, "latent_stats": vae_cfg["latent_stats"], "train": tcfg.to_dict(),
                          "data": config["data"], "step": step}, half=half)
        print(f"wrote {out / 'unet'} (step {step}, final loss {record.get('loss', float('nan')):.4f})")

    return fit(accelerator, model, dataset, diffusion_step, tcfg, out, config, start, resume, finalize, progress,
               stop_after, desc="train diffusion")
