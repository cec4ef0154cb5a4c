"""The one training loop of every stage, on HF accelerate, with exact resume.

The stages (``compress3d_lite/stages/``) build their model and a step function
``step_fn(model, batch) -> (loss, {name: tensor})``; ``fit`` does the rest: ``TrainingStep``
(AdamW with a warm-up and cosine schedule, accelerate for devices, processes and mixed
precision, gradient clipping, the EMA), the (seed, step) data order, a stop on a non-finite
loss, ``log.jsonl``, atomic training checkpoints and an exact resume.

    fit(accelerator=acc, model=module, dataset=ds, step_fn=vae_step(cfg), train=tcfg, out=run,
        config=record, finalize=write_model)

The run folder -- what a run may do with an existing one, what a resume must agree with, the
training checkpoint, caches -- is ``training/run_folder.py``. What a run leaves there:
    data/         the toy training set, when no data folder was given
    checkpoint/   latest training checkpoint: weights + config + trainer/ (optimiser, scheduler,
                  RNG states) -- what a resume continues from, at the same step, with the same
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
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..config import TrainConfig
from .run_folder import TrainingError, load_training_state, not_finite, save_training_state, trim_log, write_release


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


def _lr_lambda(tcfg: TrainConfig):
    """Linear warm-up, then cosine decay to 10% of the peak."""
    def f(step):
        if step < tcfg.warmup_steps:
            return (step + 1) / max(1, tcfg.warmup_steps)
        t = (step - tcfg.warmup_steps) / max(1, tcfg.steps - tcfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def _ema(model: torch.nn.Module, decay: float):
    """torch's AveragedModel keeping ``ema = decay * ema + (1 - decay) * weights`` after every
    optimiser step (the first step copies the weights), or None when ``decay`` is 0."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))


class TrainingStep:
    """The optimiser step of every training here -- ``fit``, the dry run's measured step
    (training/measure.py), the precision check and the ablations' seconds per step: the model
    prepared by accelerate, AdamW over its trainable parameters with the warm-up/cosine schedule,
    gradient clipping, and the EMA when ``tcfg.ema_decay`` asks for one.

        step = TrainingStep(accelerator, model, tcfg)
        loss, logs = step_fn(step.model, batch)
        step(loss)                      # backward, clip, AdamW, schedule, EMA
    """

    def __init__(self, accelerator, model: torch.nn.Module, tcfg: TrainConfig, ema: bool = True):
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tcfg))
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.accelerator, self.grad_clip = accelerator, tcfg.grad_clip
        self.ema = _ema(accelerator.unwrap_model(self.model), tcfg.ema_decay) if ema else None

    def backward(self, loss) -> None:
        """Fresh gradients of ``loss`` (accelerate: loss scaling under fp16, DDP all-reduce)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)

    def update(self) -> None:
        """Gradient clipping, the AdamW step, the learning-rate schedule, the EMA."""
        if self.grad_clip:
            self.accelerator.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.accelerator.unwrap_model(self.model))

    def __call__(self, loss) -> None:
        self.backward(loss)
        self.update()


def _step_loader(dataset, tcfg: TrainConfig, accelerator, start: int) -> torch.utils.data.DataLoader:
    """The batches of steps ``start`` .. ``tcfg.steps - 1`` for this process (StepBatchSampler)."""
    sampler = StepBatchSampler(len(dataset), tcfg.batch_size * accelerator.num_processes, tcfg.seed, start,
                               tcfg.steps, accelerator.process_index, accelerator.num_processes)
    # its own generator: a DataLoader otherwise draws its worker seed from the global RNG, which
    # would shift the model's sampling noise of a resumed run by one draw
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=tcfg.num_workers,
                                       generator=torch.Generator().manual_seed(tcfg.seed))


def _log_record(accelerator, step: int, loss, logs: dict, lr: float, t0: float) -> dict:
    """One line of ``log.jsonl``: the step's loss and logs averaged over the processes (the
    numbers of the global batch), the learning rate and the seconds since the run (re)started."""
    if accelerator.num_processes == 1:
        mean_loss, mean_logs = loss.item(), {k: float(v) for k, v in logs.items()}
    else:
        names = list(logs)
        values = torch.stack([loss.detach().float()] + [torch.as_tensor(logs[k], device=loss.device).float()
                                                         for k in names])
        values = accelerator.reduce(values, "mean").tolist()
        mean_loss, mean_logs = values[0], dict(zip(names, values[1:]))
    return {"step": step, "loss": mean_loss, **mean_logs, "lr": lr, "seconds": round(time.time() - t0, 1)}


def fit(*, accelerator, model, dataset, step_fn, train: TrainConfig, out: Path, config: dict, start: int = 0,
        resume: bool = False, finalize=None, progress: bool = True, stop_after: int | None = None,
        desc: str = "train") -> dict:
    """The one training loop of every stage: ``step_fn(model, batch) -> (loss, {name: tensor})`` is
    the stage's step, ``TrainingStep`` the optimiser's; the loop reads the (seed, step) batches,
    stops on a non-finite loss, appends to ``out/log.jsonl``, saves the training checkpoint every
    ``train.ckpt_every`` steps (``run_folder.save_training_state``: weights, optimiser, RNG, EMA,
    for an exact ``resume``) and at the end calls ``finalize(model, step, record, ema)`` on the main
    process, which writes the stage's release folder. ``stop_after``: stop (saved) at that step,
    as an interruption would. Returns the last log record."""
    out.mkdir(parents=True, exist_ok=True)
    step_ = TrainingStep(accelerator, model, train)
    if resume:
        load_training_state(out, step_, config)
    loader = _step_loader(dataset, train, accelerator, start)
    if accelerator.is_main_process:
        trim_log(out / "log.jsonl", start)  # a resume logs again from `start`; a new run starts a new log
    step_.model.train()
    record, t0, step = {}, time.time(), start
    # the bar closes (ends its line) however the loop ends, so an error prints on a line of its own
    with tqdm(total=train.steps, initial=start, desc=desc, disable=not (progress and accelerator.is_main_process)) as bar:
        for batch in loader:
            loss, logs = step_fn(step_.model, {k: v.to(accelerator.device) for k, v in batch.items()})
            if not torch.isfinite(loss):
                raise TrainingError(not_finite(out, loss.item(), step))
            step_(loss)
            step += 1
            bar.update(1)
            if step % train.log_every == 0 or step == train.steps:
                record = _log_record(accelerator, step, loss, logs, step_.scheduler.get_last_lr()[0], t0)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if accelerator.is_main_process:
                    with open(out / "log.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
            stopping = stop_after is not None and stop_after <= step < train.steps
            if (step % train.ckpt_every == 0 and step < train.steps) or stopping:
                save_training_state(out, step_, config, step)
            if stopping:
                return record
    save_training_state(out, step_, config, step)
    if accelerator.is_main_process and finalize is not None:
        unwrapped = accelerator.unwrap_model(step_.model).eval()
        write_release(out, step, lambda: finalize(unwrapped, step, record,
                                                   None if step_.ema is None else step_.ema.module.eval()))
    return record


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
    cpu = not torch.cuda.is_available() if cpu is None else cpu
    kwargs = {"mixed_precision": tcfg.mixed_precision, "cpu": cpu}
    try:
        return Accelerator(**kwargs)
    except ValueError as e:
        if "already been initialized" not in str(e) or PartialState().num_processes != 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)
