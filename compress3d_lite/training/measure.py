"""Measuring a training step without training: parameters, the activations autograd keeps,
FLOPs, memory per GPU, and one real optimiser step (what a dry run reports; scaling/dry_run.py).

    count_params(module)                 total / trainable / per child (works on the meta device)
    with activation_bytes(model, blocks) as acts: ...   bytes saved for backward, per checkpointed block
    with step_flops() as flops: ...      FlopCounterMode + the CPU attention kernel, and what it leaves out
    estimate_memory(...)                 weights + grads + AdamW + autocast copies + activations
    measure(setup)                       one forward + backward (+ the optimiser step ``fit`` runs)

A stage describes itself to these functions with a ``Setup``: its training module, step function,
random batches of the right shapes and its TrainConfig (``stages/<stage>.py``: ``dry_run_setup``).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

import psutil
import torch
from accelerate import Accelerator
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ..config import PRECISIONS
from .loop import TrainingStep


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
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# the CPU kernel of F.scaled_dot_product_attention, which FlopCounterMode's registry lacks; same formula
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward}
_NOT_COMPUTE = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "unsqueeze", "squeeze",
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
        if func.overloadpacket not in self.counted and name not in _NOT_COMPUTE and not func.is_view:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            self.elements[name] += sum(t.numel() for t in outs if torch.is_tensor(t))
        return out


@contextlib.contextmanager
def step_flops():
    """FLOPs of what runs in this context (``FlopCounterMode`` plus the CPU attention kernel).
    Yields a dict with ``so_far()`` (FLOPs counted up to now), filled on exit with ``total``,
    ``by_op`` ({op: FLOPs}) and ``uncounted`` ({op: elements produced} of the ops not counted)."""

    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
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
    half = 0.5 if mixed_precision in PRECISIONS else 1.0
    out = {"weights": 4 * n_weights, "grads": 4 * n_trainable, "adamw": 8 * n_trainable,
           "autocast_copies": 2 * n_trainable if half < 1 else 0,
           "activations": None if act_per_sample is None else act_per_sample * batch * half,
           "activations_checkpointed": None if act_checkpointed is None else act_checkpointed * batch * half,
           "batch": batch, "mixed_precision": mixed_precision, "grad_checkpoint": grad_checkpoint}
    acts = out["activations_checkpointed"] if grad_checkpoint and act_checkpointed is not None else out["activations"]
    out["total"] = out["weights"] + out["grads"] + out["adamw"] + out["autocast_copies"] + (acts or 0)
    return out



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


def random_unit(n, d, g):
    """(n, d) random unit vectors (a stand-in for embeddings)."""
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def random_points(n, k, g):
    """{points, colors} (n, k, 3): random coloured points inside the data frame."""
    return {"points": torch.rand(n, k, 3, generator=g) * 1.8 - 0.9, "colors": torch.rand(n, k, 3, generator=g)}


def without_checkpointing(cfg):
    """Turn ``cfg.grad_checkpoint`` off for the measured step; returns the preset's setting."""
    on = getattr(cfg, "grad_checkpoint", False)
    cfg.grad_checkpoint = False
    return on



def _available_ram() -> int:
    return psutil.virtual_memory().available


def measure(s: Setup, step: bool = True) -> dict:
    """One forward + backward at batch 1 on the CPU -- activations (saved-tensor hooks), FLOPs
    (FlopCounterMode) -- and, with ``step``, the optimiser step of ``fit`` on those gradients."""
    torch.manual_seed(s.tcfg.seed)
    model = s.model.train()
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train = TrainingStep(Accelerator(cpu=True), model, s.tcfg, ema=False)
    n = s.measure_batch
    batch = s.batch(n, torch.Generator().manual_seed(s.tcfg.seed))
    out = {"step_ran": False}
    if step and _available_ram() < 12 * n_trainable + 2 * 2**30:
        step = False
        out["step_skipped"] = (f"not enough free RAM for AdamW's states ({_available_ram() / 2**30:.1f} GiB free, "
                               f"{12 * n_trainable / 2**30:.1f} GiB needed): forward + backward only")
    t0 = time.perf_counter()
    with step_flops() as flops:  # fit's step: step_fn, backward, update
        with activation_bytes(train.model, s.blocks) as acts:
            loss, logs = s.step_fn(train.model, batch)
        forward = flops["so_far"]()
        train.backward(loss)
    if step:
        train.update()
    per = {"total": flops["total"] / n, "by_op": {k: v / n for k, v in flops["by_op"].items()},
           "uncounted": {k: v / n for k, v in flops["uncounted"].items()}}
    out.update(seconds=time.perf_counter() - t0, loss=loss.item(), step_ran=step, forward_flops=forward / n,
               logs={k: float(v) for k, v in logs.items()}, flops=per, batch=n,
               activations={k: v / n if k != "n_blocks" else v for k, v in acts.items()})
    return out
