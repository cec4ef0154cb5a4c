"""``compress3d-lite train ae|embed|prior|diffusion``: train a stage, or size it with --dry-run;
``train start``: the UNet's start estimate, from a finished diffusion run; ``train precision-check``:
every stage's GPU presets under 16-bit autocast, shrunk.
Each command only parses; the stage modules (``compress3d_lite/stages/``) do the work."""

from __future__ import annotations

import contextlib
import os

from ..config import GPU_PRESETS, OBJECTIVES, PRECISIONS, PRESET_NAMES, STAGE_NAMES, TIMESTEPS
from .common import CLIError, check_seed, group


def _require(args, *names):
    """--out, --vae, ... are required unless --dry-run (argparse cannot say 'unless')."""
    missing = [f"--{n}" for n in names if getattr(args, n) is None]
    if missing:
        raise CLIError(f"{', '.join(missing)} required (or --dry-run to size the run without training)")


def _train_overrides(args) -> dict:
    """TrainConfig fields given on the command line, checked before anything runs."""
    for name in ("steps", "batch_size", "n_train"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    check_seed(args.seed)
    if getattr(args, "num_workers", None) is not None and args.num_workers < 0:
        raise CLIError(f"--num-workers must be >= 0, got {args.num_workers}")
    ema = getattr(args, "ema_decay", None)
    if ema is not None and not 0 <= ema < 1:
        raise CLIError(f"--ema-decay must be in [0, 1), got {ema}")
    return {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("seed", args.seed),
                              ("n_train", getattr(args, "n_train", None)),
                              ("num_workers", getattr(args, "num_workers", None)),
                              ("ema_decay", getattr(args, "ema_decay", None))) if v is not None}


def _dry_run(stage, args, **overrides):
    """``train STAGE --preset P --dry-run [--json FILE]`` (scaling/dry_run.py)."""
    from ..data.io import prepare_output_file
    from ..scaling.dry_run import dry_run, format_dry_run, write_json

    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.json:
        prepare_output_file(args.json, args.overwrite)
    try:
        report = dry_run(stage, args.preset, overrides=overrides)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(format_dry_run(report))
    if args.json:
        print(f"wrote {write_json(report, args.json)}")
    return 0


def _main_process() -> bool:
    """Rank 0 of a launch (accelerate / torchrun set RANK), or a plain single process."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def run_folder(out):
    """One training writes into ``out`` at a time: its main process holds ``out/.train.lock``
    (``data.io.writing_into``: another live holder is an error naming its pid, a killed one's
    lock is taken over, a folder created here and left empty by a failed run is removed)."""
    from ..data.io import writing_into

    return writing_into(out, "train", what="training") if _main_process() else contextlib.nullcontext(out)


def _train(train, args, **kwargs):
    """Run a stage's ``train`` in its locked run folder; a finished run's resume says so, exit 0."""
    from ..training.run_folder import RunFinished

    _require(args, *kwargs.pop("required"))
    overrides = _train_overrides(args)
    with run_folder(args.out):
        try:
            train(args.preset, args.out, resume=args.resume, overwrite=args.overwrite, data=args.data,
                  train_overrides=overrides, half=args.half, **kwargs)
        except RunFinished as e:
            print(e)
    return 0


def cmd_train_ae(args):
    overrides = {k: v for k, v in (("attn", False if args.no_attn else None), ("attn_res", args.attn_res),
                                   ("render_loss", True if args.render_loss else None),
                                   ("grad_checkpoint", True if args.grad_checkpoint else None)) if v is not None}
    if args.dry_run:
        return _dry_run("ae", args, **overrides)
    from ..stages.vae import train_vae

    return _train(train_vae, args, required=["out"], overrides=overrides)


def cmd_train_embed(args):
    if args.dry_run:
        return _dry_run("embed", args, **({"image_tower": args.image_tower} if args.image_tower else {}))
    from ..stages.embed import train_embed

    return _train(train_embed, args, required=["out"], image_tower=args.image_tower)


def cmd_train_prior(args):
    if args.dry_run:
        return _dry_run("prior", args)
    from ..stages.prior import train_prior

    return _train(train_prior, args, required=["out", "embed"], embed=args.embed)


def cmd_train_diffusion(args):
    overrides = {"grad_checkpoint": True} if args.grad_checkpoint else {}
    if args.surface_weight is not None:
        overrides["surface_weight"] = args.surface_weight
    if args.dry_run:
        return _dry_run("diffusion", args, **overrides)
    from ..stages.unet import train_unet

    return _train(train_unet, args, required=["out", "vae", "embed"], vae=args.vae, embed=args.embed,
                  overrides=overrides, diffusion=_objective(args))


def cmd_train_start(args):
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if not 0 < args.strength < 1:
        raise CLIError(f"--strength must be in (0, 1), got {args.strength}")
    check_seed(args.seed)
    from ..stages.start import train_start

    done = train_start(args.run, steps=args.steps or 1500, strength=args.strength, seed=args.seed or 0,
                       overwrite=args.overwrite, half=args.half)
    print(f"wrote {done['folder']} (final loss {done['final_loss']:.4f}, {done['seconds']:.0f} s)")
    return 0


def cmd_precision_check(args):
    """A few training steps and a sampling pass of every stage under 16-bit autocast, shrunk
    (scaling/precision_check.py); exit 1 when any check fails."""
    import json

    import torch

    from ..data.io import atomic_write_bytes, prepare_output_file
    from ..scaling.precision_check import check

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError("--device cuda but torch sees no CUDA device")
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.json:
        prepare_output_file(args.json, overwrite=True)
    results = []
    for preset in args.presets:
        for precision in args.precision or [None]:
            for stage in args.stages:
                r = check(stage, preset, precision, args.device, args.steps)
                results.append(r)
                print(f"{'ok  ' if r['ok'] else 'FAIL'} {preset:9s} {stage:9s} {r['precision']} on {args.device}"
                      f" (preset: {r['preset_precision']}): losses {', '.join(f'{x:.4f}' for x in r['losses'])};"
                      f" sampling {r['sampling']['finite']}; {r['seconds']:.1f} s", flush=True)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(results, indent=1).encode())
    return 0 if all(r["ok"] for r in results) else 1


def _objective(args) -> dict:
    """DiffusionConfig fields from --objective / --timesteps / --logit-mean / --logit-std. Choosing
    the objective chooses its sampler too: euler for rectified flow, DPM-Solver++ for DDPM."""
    changes = {k: v for k, v in (("objective", args.objective), ("timesteps", args.timesteps),
                                 ("logit_mean", args.logit_mean), ("logit_std", args.logit_std)) if v is not None}
    if args.logit_std is not None and not args.logit_std > 0:
        raise CLIError(f"--logit-std must be > 0, got {args.logit_std}")
    if args.objective is not None:
        changes["sampler"] = "euler" if args.objective == "rectified_flow" else "dpm"
    return changes


def _common(q, what: str) -> None:
    q.add_argument("--preset", default="course", choices=PRESET_NAMES,
                   help="lite, course, colab_t4 or a100_full (default %(default)s)")
    q.add_argument("--out", default=None, help=f"run folder: checkpoint/, {what}, log.jsonl (required unless --dry-run)")
    q.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint exactly")
    q.add_argument("--overwrite", action="store_true",
                   help="start over in an OUT that holds a run (its checkpoint and log are deleted, and the toy "
                        "data an earlier run generated there; never a --data folder); with --dry-run --json: "
                        "replace that file")
    q.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    q.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size (per process)")
    q.add_argument("--seed", type=int, default=None, help="override the preset's seed (data order, init)")
    q.add_argument("--half", action="store_true", help="store the final weights in fp16")
    q.add_argument("--dry-run", action="store_true",
                   help="build the model at the preset, print parameters, memory per GPU, FLOPs and estimated "
                        "time per step, run one optimiser step on random data; train nothing, download nothing")
    q.add_argument("--json", default=None, help="with --dry-run: write all the numbers to this JSON file")


def add_parsers(sub) -> None:
    tr = group(sub, "train", "train a stage", "stage")

    ae = tr.add_parser("ae", help="the triplane VAE (stage 1)")
    _common(ae, "model/")
    ae.add_argument("--data", default=None, help="dataset folder (default: generate the toy set into OUT/data)")
    ae.add_argument("--n-train", type=int, default=None, help="toy objects to generate when no --data")
    ae.add_argument("--num-workers", type=int, default=None, help="data-loading processes (a GPU wants several)")
    ae.add_argument("--no-attn", action="store_true", help="ablation: no 3D-aware cross-attention")
    ae.add_argument("--attn-res", type=int, default=None, help="r'': resolution of the queried volume")
    ae.add_argument("--render-loss", action="store_true",
                    help="add the paper's rgb/mask/depth render losses (x10, x10, x0.1) of the field")
    ae.add_argument("--grad-checkpoint", action="store_true",
                    help="recompute the ResBlocks and the 3D-aware attention in the backward pass (less memory)")
    ae.set_defaults(func=cmd_train_ae)

    em = tr.add_parser("embed", help="image and shape towers, contrastive alignment (stage 2)")
    _common(em, "image_tower/, shape_tower/")
    em.add_argument("--data", default=None, help="dataset folder with rendered views (default: generate toy objects)")
    em.add_argument("--n-train", type=int, default=None, help="toy objects to generate when no --data")
    em.add_argument("--image-tower", default=None,
                    help="override the preset's image tower: toy, toy_lite, vit_b32, vit_bigg14")
    em.set_defaults(func=cmd_train_embed)

    pr = tr.add_parser("prior", help="the diffusion prior, image embedding -> shape embedding (stage 3)")
    _common(pr, "prior/, embeddings.safetensors")
    pr.add_argument("--embed", default=None, help="the output folder of train embed (its towers; required unless --dry-run)")
    pr.add_argument("--data", default=None, help="dataset folder with views (default: the towers' training set)")
    pr.add_argument("--ema-decay", type=float, default=None,
                    help="keep an exponential moving average of the weights with this decay, written as "
                         "ema.safetensors and used when loading (0: none; default: the preset's, 0.9999 at "
                         "colab_t4 / a100_full, none at lite / course)")
    pr.set_defaults(func=cmd_train_prior)

    df = tr.add_parser("diffusion", help="the triplane latent diffusion UNet (stage 4)")
    _common(df, "unet/, latents.safetensors")
    df.add_argument("--vae", default=None, help="the VAE model folder (its latent space and latent stats; "
                    "required unless --dry-run)")
    df.add_argument("--embed", default=None, help="the output folder of train embed (its towers; required unless --dry-run)")
    df.add_argument("--data", default=None, help="dataset folder with views (default: the towers' training set)")
    df.add_argument("--grad-checkpoint", action="store_true",
                    help="recompute the ResBlocks and cross-attention in the backward pass (~3x less activation "
                         "memory, ~1/3 more compute)")
    df.add_argument("--ema-decay", type=float, default=None,
                    help="keep an exponential moving average of the weights with this decay, written as "
                         "ema.safetensors and used when loading (0: none; default: the preset's, 0.9999 at "
                         "colab_t4 / a100_full, none at lite / course)")
    df.add_argument("--objective", default=None, choices=OBJECTIVES,
                    help="rectified_flow (straight paths, velocity target, euler sampler; the course preset) or ddpm "
                         "(v-prediction on the cosine schedule, DPM-Solver++; the other presets); docs/stages.md")
    df.add_argument("--timesteps", default=None, choices=TIMESTEPS,
                    help="training timesteps: uniform or logit_normal (the course preset, mean 1)")
    df.add_argument("--logit-mean", type=float, default=None,
                    help="logit-normal mean: above 0 spends more training samples near the noise")
    df.add_argument("--logit-std", type=float, default=None, help="logit-normal std")
    df.add_argument("--surface-weight", type=float, default=None,
                    help="add this weight x the occupancy loss of the UNet's clean estimate, decoded by the VAE, at "
                         "near-surface points (0: off, every preset; docs/stages.md)")
    df.set_defaults(func=cmd_train_diffusion)

    st = tr.add_parser("start", help="the UNet's start estimate: (e_i, e_s) -> latent, for generate --start regression",
                       description="Fit the start estimate of a finished `train diffusion` run (an MLP from the two "
                                   "embeddings to the latent, MSE, on the latents the run cached) and write it to "
                                   "RUN/unet/start; docs/stages.md.")
    st.add_argument("--run", required=True, help="the output folder of train diffusion (latents.safetensors, unet/)")
    st.add_argument("--steps", type=int, default=None, help="optimiser steps (default 1500)")
    st.add_argument("--strength", type=float, default=0.5,
                    help="the noise level t/T the UNet starts from, recorded as the default (default %(default)s)")
    st.add_argument("--seed", type=int, default=None, help="seed of the initialisation and the batches (default 0)")
    st.add_argument("--overwrite", action="store_true", help="replace RUN/unet/start")
    st.add_argument("--half", action="store_true", help="store the weights in fp16")
    st.set_defaults(func=cmd_train_start)

    pc = tr.add_parser("precision-check", help="every stage's GPU presets under 16-bit autocast, shrunk: finite?",
                       description="A few training steps of every stage at a GPU preset's precision, the models "
                                   "shrunk, then a sampling pass under autocast; every loss and output must be finite "
                                   "and the 16-bit kernels must have run (on a CPU: bf16). docs/scaling.md.")
    pc.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    pc.add_argument("--precision", nargs="+", choices=PRECISIONS, default=None,
                    help="precisions to check (default: each preset's own; on a CPU bf16)")
    pc.add_argument("--presets", nargs="+", choices=GPU_PRESETS, default=list(GPU_PRESETS),
                    help="GPU presets to check (default: both)")
    pc.add_argument("--stages", nargs="+", choices=STAGE_NAMES, default=list(STAGE_NAMES),
                    help="stages to check (default: all)")
    pc.add_argument("--steps", type=int, default=3, help="training steps per check (default %(default)s)")
    pc.add_argument("--json", default=None, help="also write the results to this JSON file")
    pc.set_defaults(func=cmd_precision_check)
