"""Dry runs of the four training stages at any preset: what a run at that scale costs, then one
real optimiser step on random data, in a minute or two on a CPU (docs/paper.md §4, §5, §6, §10).

    compress3d-lite train diffusion --preset a100_full --dry-run [--json dry.json]

What it reports, per stage and preset (all of it in ``dry_run(stage, preset) -> dict``):

  parameters   total and trainable, per sub-module, beside the paper's count where it gives one
               (prior 25.8M, UNet 864M; docs/paper.md §4, §5)
  memory       per GPU, at the preset's per-GPU batch and mixed precision: fp32 weights + fp32
               gradients + AdamW's two fp32 moments + activations. Activations are measured: one
               forward at batch 1 under ``torch.autograd.graph.saved_tensors_hooks`` sums the bytes
               of every tensor autograd keeps for the backward pass (parameters left out, shared
               storage once), times the batch, halved under bf16/fp16. With gradient checkpointing
               the blocks' own saved tensors are replaced by their inputs plus one block's worth
               (the recompute), from the same measurement.
  FLOPs        ``torch.utils.flop_counter.FlopCounterMode`` on one forward + backward at batch 1,
               times the batch. It counts matmuls, convolutions and attention; the ops it does not
               count (elementwise, normalisation, scatter, grid_sample, ...) are listed with the
               number of elements they produce.
  time         estimated, not measured: FLOPs / (peak x utilisation), A100 312 TFLOP/s bf16 and
               T4 65 TFLOP/s fp16 at an assumed 35%.
  a step       the stage's step function, then ``train.backward`` and ``train.update`` (what ``fit``
               runs: AdamW, clipping, the preset's schedule), once on random data at batch 1 (2 for
               the contrastive towers) on the CPU; the loss.

Nothing is downloaded and nothing is written (unless ``--json``): pretrained image towers are
open_clip architectures with random init, and ViT-bigG-14 (1.8B parameters) is only built on the
meta device, counted and its FLOPs traced there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

STAGES = ("ae", "embed", "prior", "diffusion")
A100_BF16 = 312e12  # FLOP/s, dense bf16 tensor cores
T4_FP16 = 65e12  # FLOP/s, dense fp16 tensor cores
UTILISATION = 0.35  # assumed fraction of peak reached by a training step
A100_BYTES, T4_BYTES = 2.0e12, 320e9  # memory bandwidth, B/s (A100 80GB SXM, T4)
BIG_TOWER = 1e9  # image towers above this many parameters stay on the meta device
PAPER = {  # docs/paper.md §4, §5, §6: parameters and training compute of each stage
    "ae": {"params": None, "gpus": 8, "hours": 6 * 24, "compute": "8 x A100, 6 days"},
    "embed": {"params": None, "gpus": None, "hours": None, "compute": "OpenShape's towers (not trained by the paper)"},
    "prior": {"params": 25.8e6, "gpus": 2, "hours": 18, "compute": "2 x A100, 18 h"},
    "diffusion": {"params": 864e6, "gpus": 8, "hours": 4 * 24, "compute": "8 x A100, 4 days"},
}
GPUS = {"a100_full": {"ae": 8, "embed": 8, "prior": 2, "diffusion": 8}, "colab_t4": 1}  # what each preset is for
PAPER_OBJECTS, VIEWS = 95_000, 8  # objects to embed at a100_full (docs/paper.md §6) and views per object


# ------------------------------------------------------------------------------------------ measuring


def count_params(module: torch.nn.Module) -> dict:
    """{"total", "trainable", "modules": {child name: parameters}} (works on the meta device)."""
    own = sum(p.numel() for p in module.parameters(recurse=False))
    modules = {name: sum(p.numel() for p in child.parameters()) for name, child in module.named_children()}
    if own:
        modules["(own parameters)"] = own
    return {"total": sum(p.numel() for p in module.parameters()),
            "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "modules": {k: v for k, v in modules.items() if v}}


def _storage(t: torch.Tensor) -> tuple:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


@contextlib.contextmanager
def activation_bytes(model: torch.nn.Module, blocks: tuple = ()):
    """Measure what autograd saves for the backward pass during the forward run in this context.

    Yields a dict filled on exit: ``total`` (bytes; parameters and buffers left out, each storage
    once), and for gradient checkpointing of the module types in ``blocks``: ``outside`` (saved
    outside any block), ``block_max`` (the largest one block saves: what its recompute needs) and
    ``block_inputs`` (the blocks' inputs, which checkpointing keeps) -- so that
    ``checkpointed = outside + block_inputs + block_max``."""
    weights = {_storage(t)[0] for t in list(model.parameters()) + list(model.buffers())}
    seen, outside, per_block, inputs, stack = set(), set(), Counter(), {}, []
    result = {}

    def pack(t):
        ptr, nbytes = _storage(t)
        if ptr not in weights and ptr not in seen:
            seen.add(ptr)
            if stack:
                per_block[stack[0]] += nbytes
            else:
                outside.add((ptr, nbytes))
        return t

    def pre(module, args):
        if stack:  # a block inside a block counts for the outer one
            stack.append(stack[0])
            return
        stack.append(len(per_block))  # a new block: its id, and its inputs (kept by checkpointing)
        per_block[stack[0]] = 0
        for a in args:
            if torch.is_tensor(a):
                inputs.setdefault(*_storage(a))

    def post(module, args, out):
        stack.pop()

    hooks = [h for m in model.modules() if blocks and isinstance(m, blocks)
             for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield result
    finally:
        for h in hooks:
            h.remove()
    out_bytes = sum(n for _, n in outside)
    out_ptrs = {p for p, _ in outside}
    result.update(total=out_bytes + sum(per_block.values()), outside=out_bytes,
                  block_max=max(per_block.values(), default=0), n_blocks=len(per_block),
                  block_inputs=sum(n for p, n in inputs.items() if p not in out_ptrs))


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# the CPU kernel of F.scaled_dot_product_attention, which FlopCounterMode's registry lacks; same formula
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward}
NOT_COMPUTE = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "unsqueeze", "squeeze",
               "slice", "select", "as_strided", "detach", "alias", "split", "split_with_sizes", "unbind", "clone",
               "copy_", "empty", "empty_like", "zeros", "zeros_like", "ones_like", "new_zeros", "new_empty",
               "new_empty_strided", "new_full", "fill_", "zero_", "_to_copy", "lift_fresh", "empty_strided", "arange",
               "full", "full_like", "scalar_tensor", "_local_scalar_dense", "cat", "stack", "repeat", "expand_as",
               "index_select", "gather", "_reshape_alias", "unfold", "randn", "rand", "normal_", "uniform_",
               "bernoulli_", "randint", "ones", "lift_fresh_copy", "is_nonzero", "set_", "resize_", "copy",
               "select_backward", "slice_backward", "index_select_backward", "unsqueeze_copy"}


class _UncountedOps(TorchDispatchMode):
    """Elements produced by every op that FlopCounterMode does not count (data movement left out)."""

    def __init__(self, counted):
        super().__init__()
        self.counted, self.elements = counted, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if func.overloadpacket not in self.counted and name not in NOT_COMPUTE and not func.is_view:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            self.elements[name] += sum(t.numel() for t in outs if torch.is_tensor(t))
        return out


@contextlib.contextmanager
def step_flops():
    """FLOPs of what runs in this context (``FlopCounterMode`` plus the CPU attention kernel).
    Yields a dict with ``so_far()`` (FLOPs counted up to now), filled on exit with ``total``,
    ``by_op`` ({op: FLOPs}) and ``uncounted`` ({op: elements produced} of the ops not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)
    census = _UncountedOps(counter.flop_registry)
    result = {"so_far": counter.get_total_flops}
    with counter, census:
        yield result
    by_op = Counter()
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        by_op[str(op).replace("aten.", "")] += n
    del result["so_far"]
    result.update(total=counter.get_total_flops(), by_op=dict(by_op.most_common()),
                  uncounted=dict(census.elements.most_common()))


def estimate_memory(n_weights: int, n_trainable: int, act_per_sample: int | None, batch: int,
                    mixed_precision: str, act_checkpointed: int | None = None, grad_checkpoint: bool = False) -> dict:
    """Training memory per GPU in bytes: fp32 weights (4 B/param; autocast keeps fp32 masters),
    fp32 gradients (4 B) and AdamW's two moments (8 B) per trainable parameter, and the
    activations of ``batch`` samples, halved under bf16/fp16 (the measured fp32 bytes x 0.5).
    Under autocast the 16-bit copies of the trainable weights are kept for the backward pass too
    (2 B each). DDP adds about one more copy of the gradients in its all-reduce buckets (not included)."""
    half = 0.5 if mixed_precision in ("fp16", "bf16") else 1.0
    out = {"weights": 4 * n_weights, "grads": 4 * n_trainable, "adamw": 8 * n_trainable,
           "autocast_copies": 2 * n_trainable if half < 1 else 0,
           "activations": None if act_per_sample is None else act_per_sample * batch * half,
           "activations_checkpointed": None if act_checkpointed is None else act_checkpointed * batch * half,
           "batch": batch, "mixed_precision": mixed_precision, "grad_checkpoint": grad_checkpoint}
    acts = out["activations_checkpointed"] if grad_checkpoint and act_checkpointed is not None else out["activations"]
    out["total"] = out["weights"] + out["grads"] + out["adamw"] + out["autocast_copies"] + (acts or 0)
    return out


# ------------------------------------------------------------------------------------------ stages


@dataclass
class Setup:
    """One stage at one preset, as ``fit`` would train it: the training module, its step
    function, random batches of the right shapes, the TrainConfig."""

    model: torch.nn.Module
    step_fn: object
    batch: object  # (n, generator) -> dict of tensors
    tcfg: object
    parts: dict  # name -> module, for the parameter report
    blocks: tuple = ()  # module types that gradient checkpointing wraps
    grad_checkpoint: bool = False  # the preset's setting (the dry-run step runs without it)
    measure_batch: int = 1  # the dry-run step's batch (2 for InfoNCE, which needs a negative)
    notes: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _unit(n, d, g):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def _points(n, k, g):  # coloured points inside the data frame
    return {"points": torch.rand(n, k, 3, generator=g) * 1.8 - 0.9, "colors": torch.rand(n, k, 3, generator=g)}


def _no_checkpointing(cfg):
    on = getattr(cfg, "grad_checkpoint", False)
    cfg.grad_checkpoint = False
    return on


def _setup_ae(preset, meta, overrides):
    from .config import ae_preset
    from .models import TriplaneVAE
    from .train import ae_step

    mcfg, tcfg = ae_preset(preset)
    for k, v in (overrides or {}).items():
        setattr(mcfg, k, v)
    if mcfg.render_loss:
        raise ValueError("the dry run does not cover --render-loss (it needs rendered views and cameras)")
    on = _no_checkpointing(mcfg)
    with torch.device("meta") if meta else contextlib.nullcontext():
        vae = TriplaneVAE(mcfg)

    def batch(n, g):
        return {**_points(n, tcfg.n_points, g), "occ_points": torch.rand(n, tcfg.n_occ, 3, generator=g) * 2 - 1,
                "occ_labels": (torch.rand(n, tcfg.n_occ, generator=g) < 0.3).float()}

    notes = [f"r = {mcfg.volume_res}, latent 3x{mcfg.latent_channels}x{mcfg.latent_res}x{mcfg.latent_res}, "
             f"r'' = {mcfg.attn_res}, {tcfg.n_points} points + {tcfg.n_occ} occupancy queries per object"]
    return Setup(vae, ae_step(mcfg), batch, tcfg, {"triplane VAE": vae}, TriplaneVAE.checkpointed, on, 1, notes)


def _pretrained_tower(cfg, meta: bool):
    """The open_clip architecture of a pretrained tower with random init (nothing downloaded)."""
    import open_clip

    from .models.image_tower import ImageTower

    quiet = logging.getLogger()
    level, quiet.level = quiet.level, logging.ERROR  # open_clip warns that no weights were loaded
    try:  # (device="meta" alone still builds on the CPU first: 10 GiB and 30 s for ViT-bigG-14)
        with torch.device("meta") if meta else contextlib.nullcontext():
            clip = open_clip.create_model(cfg.arch, pretrained=None, device="meta" if meta else "cpu")
    finally:
        quiet.level = level
    return ImageTower(cfg, clip.visual).requires_grad_(False).eval()


def _setup_embed(preset, meta, overrides):
    from .config import IMAGE_TOWERS, embed_preset
    from .models.contrastive import ShapeImageAligner
    from .models.image_tower import ImageTower
    from .models.shape_tower import ShapeTower
    from .train import FrozenTowerAligner, embed_step

    tower_cfg, frozen, shape_cfg, tcfg = embed_preset(preset)
    if (overrides or {}).get("image_tower"):
        if overrides["image_tower"] not in IMAGE_TOWERS:
            raise ValueError(f"unknown image tower {overrides['image_tower']!r}; choose from {', '.join(IMAGE_TOWERS)}")
        tower_cfg = IMAGE_TOWERS[overrides["image_tower"]]
        frozen = tower_cfg.pretrained is not None
    shape_cfg.embed_dim = D = tower_cfg.embed_dim
    notes, extra = [], {}
    if frozen:  # OpenShape's recipe: the tower embeds every view once; training sees the embeddings
        tower = _pretrained_tower(tower_cfg, meta=True)
        n_tower = sum(p.numel() for p in tower.parameters())
        extra["image_tower"] = probe_tower(tower_cfg, on_meta=meta or n_tower > BIG_TOWER)
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = FrozenTowerAligner(ShapeTower(shape_cfg))
        parts = {f"image tower {tower_cfg.name} (frozen, precomputed)": tower, "shape tower": model.shape_tower,
                 "temperature": model.loss_fn}
        notes.append(f"image tower {tower_cfg.arch} built with random init ({tower_cfg.pretrained} weights are "
                     "not downloaded); frozen: its embeddings of all views are computed once before training, "
                     "so the step below trains the shape tower against random unit image embeddings")

        def batch(n, g):
            return {**_points(n, tcfg.n_points, g), "e_i": _unit(n, D, g)}
    else:
        with torch.device("meta") if meta else contextlib.nullcontext():
            tower = ImageTower(tower_cfg)
            model = ShapeImageAligner(tower, ShapeTower(shape_cfg), False)
        parts = {f"image tower {tower_cfg.name} (trained)": tower, "shape tower": model.shape_tower,
                 "temperature": model.loss_fn}
        S = max(64, tower_cfg.image_size)  # what train embed renders

        def batch(n, g):
            return {**_points(n, tcfg.n_points, g), "image": torch.rand(n, 4, S, S, generator=g)}
    return Setup(model, embed_step, batch, tcfg, parts, (), False, 2, notes, extra)


def probe_tower(cfg, on_meta: bool) -> dict:
    """A frozen tower's precompute cost: parameters, weight bytes and forward FLOPs per view,
    traced on the meta device for a big tower, else run once on a random view with random init."""
    t0 = time.perf_counter()
    tower = _pretrained_tower(cfg, meta=on_meta)
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size, device="meta" if on_meta else "cpu")
    with torch.no_grad(), step_flops() as flops:
        tower(x)
    n = sum(p.numel() for p in tower.parameters())
    return {"arch": cfg.arch, "params": n, "weights_bytes": 4 * n, "flops_per_view": flops["total"],
            "device": "meta" if on_meta else "cpu", "seconds": time.perf_counter() - t0,
            "how": ("built on the meta device (random init on the CPU would need "
                    f"{4 * n / 2**30:.1f} GiB for the visual tower alone): counted and traced, never run")
            if on_meta else "built with random init and run once on a random view"}


def _setup_prior(preset, meta, overrides):
    from .config import DiffusionConfig, prior_preset
    from .diffusion import make_scheduler
    from .models.prior import DiffusionPrior
    from .train import PriorObjective, prior_step

    pcfg, tcfg = prior_preset(preset)
    dcfg = DiffusionConfig()
    with torch.device("meta") if meta else contextlib.nullcontext():
        prior = DiffusionPrior(pcfg, dcfg)
    model = PriorObjective(prior, make_scheduler(dcfg, "ddpm"))

    def batch(n, g):
        return {"e_s": _unit(n, pcfg.embed_dim, g), "e_i": _unit(n, pcfg.embed_dim, g)}

    notes = [f"embedding dim {pcfg.embed_dim}, width {pcfg.width}, {pcfg.depth} blocks"]
    return Setup(model, prior_step, batch, tcfg, {"prior": prior}, (), False, 1, notes)


def _setup_diffusion(preset, meta, overrides):
    from .config import DiffusionConfig, ae_preset, diffusion_preset, embed_preset
    from .diffusion import make_scheduler
    from .models.triplane_unet import TriplaneUNet
    from .train import DiffusionObjective, diffusion_step

    ucfg, tcfg = diffusion_preset(preset)
    for k, v in (overrides or {}).items():
        setattr(ucfg, k, v)
    # the UNet lives in the same preset's VAE latent space and towers' space (as train diffusion sets it)
    ae_cfg, tower_cfg = ae_preset(preset)[0], embed_preset(preset)[0]
    ucfg.latent_channels, ucfg.latent_res, ucfg.embed_dim = ae_cfg.latent_channels, ae_cfg.latent_res, tower_cfg.embed_dim
    on = _no_checkpointing(ucfg)
    dcfg = DiffusionConfig(prediction_type="v_prediction")
    with torch.device("meta") if meta else contextlib.nullcontext():
        unet = TriplaneUNet(ucfg)
    model = DiffusionObjective(unet, make_scheduler(dcfg, "ddpm"))
    shape = (3, ucfg.latent_channels, ucfg.latent_res, ucfg.latent_res)

    def batch(n, g):
        return {"z": torch.randn(n, *shape, generator=g), "e_i": _unit(n, ucfg.embed_dim, g),
                "e_s": _unit(n, ucfg.embed_dim, g)}

    notes = [f"latent {'x'.join(map(str, shape))}, channels {tuple(ucfg.channels)}, "
             f"{ucfg.blocks_per_level} blocks per level, cross-attention at levels {tuple(ucfg.attn_levels)}"]
    return Setup(model, diffusion_step, batch, tcfg, {"UNet": unet}, TriplaneUNet.checkpointed, on, 1, notes)


SETUPS = {"ae": _setup_ae, "embed": _setup_embed, "prior": _setup_prior, "diffusion": _setup_diffusion}


def setup(stage: str, preset: str, meta: bool = False, overrides: dict | None = None) -> Setup:
    """The training module, step function and data shapes of ``stage`` at ``preset``."""
    if stage not in SETUPS:
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    return SETUPS[stage](preset, meta, overrides)


# ------------------------------------------------------------------------------------------ the dry run


def _available_ram() -> int:
    import psutil

    return psutil.virtual_memory().available


def measure(s: Setup, step: bool = True) -> dict:
    """One forward + backward at batch 1 on the CPU -- activations (saved-tensor hooks), FLOPs
    (FlopCounterMode) -- and, with ``step``, the optimiser step of ``fit`` on those gradients."""
    from accelerate import Accelerator

    from .train import backward, make_optimizer, update

    torch.manual_seed(s.tcfg.seed)
    model = s.model.train()
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    accelerator = Accelerator(cpu=True)
    params, optimizer, scheduler = make_optimizer(model, s.tcfg)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    n = s.measure_batch
    batch = s.batch(n, torch.Generator().manual_seed(s.tcfg.seed))
    out = {"step_ran": False}
    if step and _available_ram() < 12 * n_trainable + 2 * 2**30:
        step = False
        out["step_skipped"] = (f"not enough free RAM for AdamW's states ({_available_ram() / 2**30:.1f} GiB free, "
                               f"{12 * n_trainable / 2**30:.1f} GiB needed): forward + backward only")
    t0 = time.perf_counter()
    with step_flops() as flops:  # train.fit's step: step_fn, backward, update
        with activation_bytes(model, s.blocks) as acts:
            loss, logs = s.step_fn(model, batch)
        forward = flops["so_far"]()
        backward(accelerator, loss, optimizer)
    if step:
        update(accelerator, optimizer, scheduler, params, s.tcfg.grad_clip)
    per = {"total": flops["total"] / n, "by_op": {k: v / n for k, v in flops["by_op"].items()},
           "uncounted": {k: v / n for k, v in flops["uncounted"].items()}}
    out.update(seconds=time.perf_counter() - t0, loss=loss.item(), step_ran=step, forward_flops=forward / n,
               logs={k: float(v) for k, v in logs.items()}, flops=per, batch=n,
               activations={k: v / n if k != "n_blocks" else v for k, v in acts.items()})
    return out


def _time(flops: float, peak: float) -> float:
    return flops / (peak * UTILISATION)


def _traffic(elements: float, mixed_precision: str) -> float:
    """Bytes the uncounted (memory-bound) ops move at least: two reads and one write per element."""
    return elements * 3 * (2 if mixed_precision in ("fp16", "bf16") else 4)


def dry_run(stage: str, preset: str, step: bool = True, measure_step: bool = True,
            overrides: dict | None = None) -> dict:
    """Everything about training ``stage`` at ``preset`` short of training it (module docstring).

    ``measure_step=False``: build on the meta device and count only (no activations, FLOPs or
    step; instant even for the 887M UNet). ``step=False``: measure, but run no optimiser step.
    ``overrides``: ``batch_size``; for ``ae`` / ``diffusion`` AEConfig / UNetConfig fields (e.g.
    ``grad_checkpoint``); for ``embed`` ``image_tower``."""
    t0 = time.perf_counter()
    overrides = dict(overrides or {})
    batch_size = overrides.pop("batch_size", None)
    s = setup(stage, preset, meta=not measure_step, overrides=overrides)
    tcfg = s.tcfg
    if batch_size:
        tcfg.batch_size = batch_size
    parts = {name: count_params(m) for name, m in s.parts.items()}
    model = count_params(s.model)
    paper = PAPER[stage]
    total = sum(p["total"] for p in parts.values())
    report = {
        "stage": stage, "preset": preset, "notes": s.notes, **s.extra,
        "params": {"total": total, "trainable": model["trainable"], "in_training_step": model["total"],
                   "parts": parts, "paper": paper["params"],
                   "vs_paper": None if not paper["params"] else total / paper["params"] - 1},
        "batch_per_gpu": tcfg.batch_size, "mixed_precision": tcfg.mixed_precision,
        "grad_checkpoint": s.grad_checkpoint, "grad_checkpoint_supported": bool(s.blocks), "steps": tcfg.steps,
        "assumptions": {"a100_bf16_flops": A100_BF16, "t4_fp16_flops": T4_FP16, "utilisation": UTILISATION},
        "paper_compute": paper["compute"],
        "paper_gpu_hours": paper["gpus"] * paper["hours"] if paper["gpus"] else None,
    }
    m = measure(s, step=step) if measure_step else None
    act = chk = None
    if m:
        a = m["activations"]
        act = a["total"]
        chk = a["outside"] + a["block_inputs"] + a["block_max"] if s.blocks else None
        B = tcfg.batch_size
        step_flops_ = m["flops"]["total"] * B
        recompute = m["forward_flops"] * B if s.grad_checkpoint else 0  # upper bound: the whole forward
        flops_for_time = step_flops_ + recompute
        traffic = _traffic(sum(m["flops"]["uncounted"].values()) * B, tcfg.mixed_precision)
        report.update(
            activations={"per_sample_fp32": act, "checkpointed_per_sample_fp32": chk, **a},
            flops={"per_step": step_flops_, "per_sample": m["flops"]["total"], "forward_per_sample": m["forward_flops"],
                   "recompute_per_step_max": recompute, "by_op_per_sample": m["flops"]["by_op"],
                   "uncounted_elements_per_sample": m["flops"]["uncounted"]},
            time={"a100_s": _time(flops_for_time, A100_BF16), "t4_s": _time(flops_for_time, T4_FP16),
                  "a100_memory_bound_s": traffic / A100_BYTES, "t4_memory_bound_s": traffic / T4_BYTES,
                  "estimated": True},
            cpu_step={"batch": m["batch"], "seconds": m["seconds"], "loss": m["loss"], "logs": m["logs"],
                      "optimizer_step": m["step_ran"], "skipped": m.get("step_skipped"), "threads": torch.get_num_threads()})
        gpus = GPUS.get(preset)
        gpus = gpus.get(stage) if isinstance(gpus, dict) else gpus
        if gpus:  # FLOP time + memory-bound time
            gpu = "a100" if preset == "a100_full" else "t4"
            per_step = report["time"][f"{gpu}_s"] + report["time"][f"{gpu}_memory_bound_s"]
            hours = tcfg.steps * per_step / 3600
            report["full_run"] = {"gpus": gpus, "gpu": "A100" if preset == "a100_full" else "T4",
                                  "steps": tcfg.steps, "hours": hours, "gpu_hours": hours * gpus, "estimated": True}
    report["memory"] = estimate_memory(model["total"], model["trainable"], act, tcfg.batch_size, tcfg.mixed_precision,
                                       chk, s.grad_checkpoint)
    tower = s.extra.get("image_tower")
    if tower:
        n_views = (tcfg.n_train or PAPER_OBJECTS) * VIEWS
        tower["precompute"] = {"views": n_views, "objects_assumed": not tcfg.n_train,
                               "flops": tower["flops_per_view"] * n_views,
                               "a100_hours": _time(tower["flops_per_view"] * n_views, A100_BF16) / 3600,
                               "t4_hours": _time(tower["flops_per_view"] * n_views, T4_FP16) / 3600}
    report["seconds"] = time.perf_counter() - t0
    return report


# ------------------------------------------------------------------------------------------ printing


def _n(x: float) -> str:
    return (f"{x / 1e9:.2f}B" if x >= 1e9 else f"{x / 1e6:.2f}M" if x >= 1e5 else f"{x / 1e3:.1f}k" if x >= 1e3
            else f"{x:.0f}")


def _gb(x: float) -> str:
    return f"{x / 2**30:.2f} GiB" if x >= 2**28 else f"{x / 2**20:.0f} MiB" if x >= 2**20 else f"{x / 2**10:.0f} KiB"


def _tf(x: float) -> str:
    return f"{x / 1e15:.2f} PFLOP" if x >= 1e15 else f"{x / 1e12:.2f} TFLOP" if x >= 1e11 else f"{x / 1e9:.2f} GFLOP"


def _s(x: float) -> str:
    return f"{x * 1e6:.0f} us" if x < 1e-3 else f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _dur(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def format_dry_run(r: dict) -> str:
    """The report of ``dry_run`` as text (what ``--dry-run`` prints)."""
    p, mem = r["params"], r["memory"]
    lines = [f"dry run: train {r['stage']} --preset {r['preset']} (nothing downloaded, nothing written)"]
    lines += [f"  {note}" for note in r["notes"]]
    paper = f" (paper: {_n(p['paper'])}; ours {p['vs_paper']:+.1%})" if p["paper"] and r["preset"] == "a100_full" else ""
    lines.append(f"parameters: {_n(p['total'])} total, {_n(p['trainable'])} trainable{paper}")
    for name, part in p["parts"].items():
        lines.append(f"  {name}: {_n(part['total'])}" + ("" if part["trainable"] == part["total"] else " (frozen)"
                                                          if not part["trainable"] else f" ({_n(part['trainable'])} trainable)"))
        if part["total"] >= 1e6 and len(part["modules"]) > 1:
            lines.append("    " + ", ".join(f"{k} {_n(v)}" for k, v in part["modules"].items()))
    tower = r.get("image_tower")
    if tower:
        pre = tower["precompute"]
        lines.append(f"  frozen tower {tower['arch']}: {tower['how']}; {_tf(tower['flops_per_view'])} per view; "
                     f"precomputing {pre['views']:,} views ({'assumed: ' if pre['objects_assumed'] else ''}"
                     f"{pre['views'] // VIEWS:,} objects x {VIEWS}) = {_tf(pre['flops'])}, about "
                     f"{_dur(pre['a100_hours'] * 3600)} on an A100 / {_dur(pre['t4_hours'] * 3600)} on a T4 (estimated)")
    ckpt = ("on" if r["grad_checkpoint"] else "off") if r["grad_checkpoint_supported"] else "n/a"
    lines.append(f"per-GPU batch {r['batch_per_gpu']}, mixed precision {r['mixed_precision']}, "
                 f"gradient checkpointing {ckpt}")
    if mem["activations"] is None:
        lines.append(f"memory per GPU (estimated, without activations: not measured): weights {_gb(mem['weights'])}"
                     f" + grads {_gb(mem['grads'])} + AdamW {_gb(mem['adamw'])} + 16-bit weight copies "
                     f"{_gb(mem['autocast_copies'])} = {_gb(mem['total'])}")
    else:
        a = r["activations"]
        use_ckpt = r["grad_checkpoint"] and mem["activations_checkpointed"] is not None
        acts = mem["activations_checkpointed"] if use_ckpt else mem["activations"]
        how = ""
        if mem["activations_checkpointed"] is not None:
            how = (f" (with checkpointing; {_gb(mem['activations'])} without)" if use_ckpt else
                   f" (checkpointing would make it {_gb(mem['activations_checkpointed'])})")
        copies = f" + 16-bit weight copies {_gb(mem['autocast_copies'])}" if mem["autocast_copies"] else ""
        lines.append(f"memory per GPU (estimated): weights {_gb(mem['weights'])} + grads {_gb(mem['grads'])} + "
                     f"AdamW {_gb(mem['adamw'])}{copies} + activations {_gb(acts)}{how} = {_gb(mem['total'])}")
        half = ", /2 for " + r["mixed_precision"] if r["mixed_precision"] in ("bf16", "fp16") else ""
        lines.append(f"  activations measured at batch {r['cpu_step']['batch']}: {_gb(a['per_sample_fp32'])} per sample "
                     "saved for backward (fp32), "
                     f"x{r['batch_per_gpu']}{half}; DDP adds about one more copy of the grads")
        f = r["flops"]
        counted = ", ".join(list(f["by_op_per_sample"])[:4])
        unc = f["uncounted_elements_per_sample"]
        n_unc = sum(unc.values())
        lines.append(f"FLOPs per step: {_tf(f['per_step'])} ({_tf(f['per_sample'])} forward + backward per sample "
                     f"x {r['batch_per_gpu']}; counted: {counted})")
        if n_unc:
            top = ", ".join(f"{k} {_n(v)}" for k, v in list(unc.items())[:5])
            lines.append(f"  not counted (elementwise, norms, scatter, ...): {_n(n_unc)} elements produced per "
                         f"sample, about {n_unc / max(1, f['per_sample']):.1%} of the count at 1 FLOP each; "
                         f"largest: {top}")
        if f["recompute_per_step_max"]:
            lines.append(f"  gradient checkpointing recomputes the blocks' forward: at most +{_tf(f['recompute_per_step_max'])}"
                         " per step (included in the times below)")
        t = r["time"]
        lines.append(f"time per step (estimated from FLOPs at {UTILISATION:.0%} of peak, not measured): "
                     f"A100 bf16 ({A100_BF16 / 1e12:.0f} TFLOP/s) {_s(t['a100_s'])}; "
                     f"T4 fp16 ({T4_FP16 / 1e12:.0f} TFLOP/s) {_s(t['t4_s'])}")
        lines.append(f"  plus the memory-bound ops left out of the FLOPs (3 accesses per element at full bandwidth, "
                     f"a lower bound): A100 {_s(t['a100_memory_bound_s'])}, T4 {_s(t['t4_memory_bound_s'])}")
        run = r.get("full_run")
        if run:
            paper = f" (paper: {r['paper_compute']} = {r['paper_gpu_hours']:,} GPU-hours)" if r["paper_gpu_hours"] else ""
            lines.append(f"full run (estimated, FLOP + memory-bound time): {run['steps']:,} steps on "
                         f"{run['gpus']} x {run['gpu']} = "
                         f"{run['hours']:,.1f} h = {run['gpu_hours']:,.{0 if run['gpu_hours'] >= 10 else 1}f} "
                         f"GPU-hours{paper}")
        if t["a100_s"] < 0.05:
            lines.append("  a step this small is bound by kernel launches, memory traffic and data loading, not "
                         "FLOPs: expect several times the estimate (the course VAE: 2 ms estimated, 76 ms "
                         "measured on an H100 with data loading)")
        c = r["cpu_step"]
        what = "one optimiser step" if c["optimizer_step"] else "forward + backward (no optimiser step)"
        lines.append(f"{what} on random data at batch {c['batch']} (CPU, {c['threads']} threads, {_s(c['seconds'])} "
                     f"with the counters on): loss {c['loss']:.4f}")
        if c["skipped"]:
            lines.append(f"  {c['skipped']}")
        if r["grad_checkpoint"]:
            lines.append("  (the step ran without checkpointing; it changes memory, not the loss or gradients)")
    lines.append(f"dry run took {r['seconds']:.1f} s")
    return "\n".join(lines)


def write_json(report: dict, path) -> Path:
    """The report as JSON (all numbers; bytes, FLOPs and seconds unscaled)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path
