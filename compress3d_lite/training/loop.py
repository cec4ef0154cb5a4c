"""The one training loop of every stage, on HF accelerate, with exact resume.

The stages (``compress3d_lite/stages/``) build their model and a step function
``step_fn(model, batch) -> (loss, {name: tensor})``; ``fit`` does the rest: AdamW with a warm-up
and cosine schedule, accelerate (devices, processes, mixed precision), the (seed, step) data
order, gradient clipping, a stop on a non-finite loss, ``log.jsonl``, atomic training checkpoints
and an exact ``--resume``.

What a run may do with an existing ``--out`` and what a resume must agree with is
``training/run_folder.py``. What a run leaves in ``--out``:
    data/         the toy training set, when no --data was given
    checkpoint/   latest training checkpoint: weights + config + trainer/ (optimiser, scheduler,
                  RNG states) -- what --resume continues from, at the same step, with the same
                  data order and the same random draws
    <release>/    the stage's final weights (model/, image_tower/ + shape_tower/, prior/, unet/)
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
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..checkpoint import read_config, read_weights, write_checkpoint
from ..config import Config
from .run_folder import TrainingError, check_same_data, failure_reason, is_write_failure, trim_log, what_to_run


@dataclass
class TrainConfig(Config):
    """One training run (any stage): steps, batch, optimiser, logging, checkpoints."""

    steps: int = 3000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    n_points: int = 2048  # surface points per object per step (input and colour targets)
    n_occ: int = 4096  # occupancy queries per object per step
    n_train: int = 512  # toy objects made for training when no --data is given
    log_every: int = 50
    ckpt_every: int = 500
    seed: int = 0
    mixed_precision: str = "no"  # accelerate: "no", "fp16", "bf16"
    num_workers: int = 0
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights (0: none)


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
    (``stages/dryrun.py``) share ``backward`` and ``update``."""
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
    trainer state for an exact ``resume``), with ``tcfg.ema_decay`` an exponential moving average
    of the weights (saved and resumed with the rest), and at the end ``finalize(unwrapped_model,
    step, record, ema)`` on the main process (which writes the stage's release folder; ``ema`` is
    the averaged copy of the training module, or None)."""
    from tqdm.auto import tqdm

    params, optimizer, scheduler = make_optimizer(model, tcfg)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ckpt_dir = out / "checkpoint"
    ema = make_ema(accelerator.unwrap_model(model), tcfg.ema_decay)
    if resume:
        check_same_data(ckpt_dir, read_config(ckpt_dir).get("data") or {}, config.get("data") or {})
        accelerator.load_state(str(ckpt_dir / "trainer"))
        if ema is not None:
            ema.load_state_dict(read_weights(ckpt_dir / "trainer", "ema.safetensors"))
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
                if ema is not None:  # the averaged weights and how many updates they hold
                    save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()},
                              str(d / "ema.safetensors"))

            state = accelerator.unwrap_model(model).state_dict()
            try:
                write_checkpoint(ckpt_dir, state, {**config, "step": step}, extra_dirs={"trainer": trainer})
            except Exception as e:
                if not is_write_failure(e):
                    raise
                raise TrainingError(f"{ckpt_dir}: the checkpoint of step {step} could not be written "
                                    f"({failure_reason(e)}); " + what_to_run(out, ckpt_dir)) from None
            shutil.rmtree(staging, ignore_errors=True)
        accelerator.wait_for_everyone()

    log_file = out / "log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        trim_log(log_file, start)  # a resume logs again from `start`; a new run starts a new log
    model.train()
    record, t0, step = {}, time.time(), start
    # the bar closes (ends its line) however the loop ends, so an error prints on a line of its own
    with tqdm(total=tcfg.steps, initial=start, desc=desc,
              disable=not (progress and accelerator.is_main_process)) as bar:
        for batch in loader:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            loss, logs = step_fn(model, batch)
            if not torch.isfinite(loss):
                last = read_config(ckpt_dir)["step"] if ckpt_dir.exists() else "none"
                raise TrainingError(f"loss is {loss.item()} at step {step}; stopping. The last good checkpoint "
                                    f"is {ckpt_dir} (step {last}); lower the learning rate and --resume")
            backward(accelerator, loss, optimizer)
            update(accelerator, optimizer, scheduler, params, tcfg.grad_clip)
            if ema is not None:
                ema.update_parameters(accelerator.unwrap_model(model))
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
                return record
    save(step)
    if accelerator.is_main_process and finalize is not None:
        try:
            finalize(accelerator.unwrap_model(model).eval(), step, record, None if ema is None else ema.module.eval())
        except Exception as e:
            if not is_write_failure(e):
                raise
            raise TrainingError(f"{out}: the trained weights could not be written ({failure_reason(e)}); the checkpoint of "
                                f"step {step} is kept: free space and run the same command with --resume") from None
    return record


def make_ema(model: torch.nn.Module, decay: float):
    """torch's AveragedModel keeping ``ema = decay * ema + (1 - decay) * weights`` after every
    optimiser step (the first step copies the weights), or None when ``decay`` is 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))


class Objective(torch.nn.Module):
    """A model's diffusion loss as a module, so accelerate/DDP can wrap it: forward(*batch) ->
    ``model.loss(*batch, scheduler)``. The model is registered under ``name`` ("prior", "unet"),
    the prefix of its weights in training checkpoints."""

    def __init__(self, name: str, model: torch.nn.Module, scheduler):
        super().__init__()
        self.name, self.scheduler = name, scheduler
        self.add_module(name, model)

    def forward(self, *batch):
        return getattr(self, self.name).loss(*batch, self.scheduler)


def make_accelerator(tcfg: TrainConfig, cpu: bool | None = None):
    """accelerate's Accelerator for a run: the preset's mixed precision (bf16 autocast runs on a CPU
    too; fp16 autocast needs CUDA); the CPU when there is no CUDA. In a single process (a notebook,
    the tests) a run may use another precision than the one before it: accelerate's global state
    is reset for it. ``cpu``: run on the CPU (default: when there is no CUDA)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    cpu = not torch.cuda.is_available() if cpu is None else cpu
    kwargs = {"mixed_precision": tcfg.mixed_precision, "cpu": cpu}
    try:
        return Accelerator(**kwargs)
    except ValueError as e:
        if "already been initialized" not in str(e) or PartialState().num_processes != 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


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
