"""One training loop on HF accelerate, with exact resume. Stage 1: the triplane VAE.

    # CPU (the shipped course checkpoint; ~30 min on 2 cores)
    compress3d-lite train ae --preset course --out runs/vae_course
    # one GPU
    compress3d-lite train ae --preset colab_t4 --data data/toyshapes --out runs/vae_t4
    # several GPUs / nodes (paper scale)
    accelerate launch --multi_gpu --num_processes 8 -m compress3d_lite.cli train ae \
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
"""

from __future__ import annotations

import json
import math
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


def prepare_data(data: str | None, out: Path, tcfg: TrainConfig, accelerator, views: bool = False) -> Path:
    """The training folder: ``data`` if given, else a toy set generated once into out/data
    (with 4 views at 64 px when the render losses need them)."""
    from .data.io import read_index

    if data:
        read_index(data)  # a clear error now rather than in a worker later
        return Path(data)
    folder = out / "data"
    if accelerator.is_main_process and not (folder / "index.json").exists():
        from .config import SampleSpec
        from .data.toyshapes import write_toyshapes

        spec = SampleSpec(n_points=max(4096, tcfg.n_points), n_uniform=max(8192, tcfg.n_occ // 2),
                          n_near=max(8192, tcfg.n_occ // 2), views=4 if views else 0, resolution=64)
        print(f"no --data given: generating {tcfg.n_train} toy objects (seed {tcfg.seed}) into {folder}")
        write_toyshapes(tcfg.n_train, folder, spec, seed=tcfg.seed, workers=2)
    accelerator.wait_for_everyone()
    return folder


def compute_latent_stats(model, dataset, n: int, device) -> dict:
    """Per-channel mean/std of the posterior means over ``n`` objects (DESIGN.md section 3)."""
    mus = []
    with torch.no_grad():
        for i in range(min(n, len(dataset))):
            item = dataset[i]
            mu, _ = model.encode(item["points"][None].to(device), item["colors"][None].to(device))
            mus.append(mu)
    mu = torch.cat(mus)  # (n, 3, c', r', r')
    return {"mean": mu.mean(dim=(0, 1, 3, 4)).tolist(), "std": mu.std(dim=(0, 1, 3, 4)).clamp_min(1e-6).tolist(),
            "n_objects": len(mus)}


def train_ae(preset: str, out, data: str | None = None, resume: bool = False, overrides: dict | None = None,
             train_overrides: dict | None = None, half: bool = False, progress: bool = True,
             stop_after: int | None = None) -> dict:
    """Train (or resume) a triplane VAE. Returns the last log record.

    ``stop_after``: stop at that step with a training checkpoint, as an interrupted run would
    (``--resume`` then continues exactly; used by the tests and for time-boxed sessions)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from .data.dataset import ObjectDataset
    from .models import TriplaneVAE

    out = Path(out)
    mcfg, tcfg = ae_preset(preset)
    for k, v in (overrides or {}).items():
        setattr(mcfg, k, v)
    for k, v in (train_overrides or {}).items():
        setattr(tcfg, k, v)
    ckpt_dir = out / "checkpoint"
    start = 0
    if resume:
        if not ckpt_dir.exists():
            raise TrainingError(f"{ckpt_dir}: nothing to resume from (run without --resume first)")
        saved = read_config(ckpt_dir)
        if saved.get("preset") != preset or saved.get("model") != mcfg.to_dict():
            raise TrainingError(f"{ckpt_dir}: was trained with preset {saved.get('preset')!r} and another "
                                "model config; resume with the same options or use a new --out")
        start = int(saved["step"])
        tcfg = TrainConfig(**{**saved["train"], "steps": tcfg.steps})

    accelerator = Accelerator(mixed_precision=tcfg.mixed_precision, cpu=not torch.cuda.is_available())
    torch.manual_seed(tcfg.seed)
    folder = prepare_data(data, out, tcfg, accelerator, views=mcfg.render_loss)
    dataset = ObjectDataset(folder, n_points=tcfg.n_points, n_occ=tcfg.n_occ, seed=tcfg.seed,
                            views=mcfg.render_loss)
    model = TriplaneVAE(mcfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if resume:
        accelerator.load_state(str(ckpt_dir / "trainer"))
    sampler = StepBatchSampler(len(dataset), tcfg.batch_size * accelerator.num_processes, tcfg.seed, start,
                               tcfg.steps, accelerator.process_index, accelerator.num_processes)
    # its own generator: a DataLoader otherwise draws its worker seed from the global RNG, which
    # would shift the VAE's sampling noise of a resumed run by one draw
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=tcfg.num_workers,
                                         generator=torch.Generator().manual_seed(tcfg.seed))

    config = {"kind": "triplane_vae", "preset": preset, "model": mcfg.to_dict(), "train": tcfg.to_dict(),
              "data": {"folder": str(folder), "n_objects": len(dataset), "spec": dataset.index.get("spec"),
                       "generator": dataset.index.get("generator"), "seed": dataset.index.get("seed")}}

    def save(step):
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = accelerator.unwrap_model(model).state_dict()
            write_checkpoint(ckpt_dir, state, {**config, "step": step},
                             extra_dirs={"trainer": lambda d: accelerator.save_state(str(d))})

    log_file = out / "log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    if accelerator.is_main_process:
        print(f"train ae: preset {preset}, {n_params / 1e6:.2f}M params, attention {'on' if mcfg.attn else 'off'}, "
              f"{len(dataset)} objects, steps {start} -> {tcfg.steps}, device {accelerator.device}")
    model.train()
    record, t0, step = {}, time.time(), start
    bar = tqdm(total=tcfg.steps, initial=start, desc="train ae", disable=not (progress and accelerator.is_main_process))
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        views = tuple(batch[k] for k in ("images", "depths", "cam2world", "intrinsics")) if mcfg.render_loss else None
        out_ = model(batch["points"], batch["colors"], batch["occ_points"], batch["occ_labels"], views=views)
        if not torch.isfinite(out_.loss):
            raise TrainingError(f"loss is {out_.loss.item()} at step {step}; stopping. The last good checkpoint "
                                f"is {ckpt_dir} (step {read_config(ckpt_dir)['step'] if ckpt_dir.exists() else 'none'}); "
                                "lower the learning rate and --resume")
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(out_.loss)
        if tcfg.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            acc = ((out_.occ_logits > 0) == (batch["occ_labels"] > 0.5)).float().mean()
            record = {"step": step, "loss": out_.loss.item(), "occ_bce": out_.occ_loss.item(),
                      "color_l1": out_.color_loss.item(), "kl": out_.kl.item(), "occ_acc": acc.item(),
                      "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - t0, 1),
                      **{f"render_{k}": v.item() for k, v in out_.render.items()}}
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['occ_acc']:.3f}")
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
    if accelerator.is_main_process:
        net = accelerator.unwrap_model(model).eval()
        stats = compute_latent_stats(net, ObjectDataset(folder, n_points=tcfg.n_points), 64, accelerator.device)
        write_checkpoint(out / "model", net.state_dict(), {**config, "step": step, "latent_stats": stats}, half=half)
        print(f"wrote {out / 'model'} (step {step}, final loss {record.get('loss', float('nan')):.4f})")
    return record
