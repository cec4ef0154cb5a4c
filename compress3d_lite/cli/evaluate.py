"""``compress3d-lite evaluate ae|embed|prior|generate|paper``: metrics of the trained stages on
held-out toy objects (``compress3d_lite/evaluation/``)."""

from __future__ import annotations

from pathlib import Path

from ..config import SAMPLERS, STARTS
from .common import CLIError, group, json_path_arg

SPLITS = ("train", "val", "test")
SPLIT_HELP = "toy seed range: train 0, val 500, test 1000 (default %(default)s)"
PIPELINE_HELP = "preset name or pipeline folder (default: the shipped course checkpoints)"


def _write(report, args) -> None:
    from ..evaluation.report import write_report

    if args.json:
        print(f"wrote {write_report(report, args.json)}")


def cmd_evaluate_ae(args):
    from ..evaluation.vae import evaluate_vae, format_table

    if args.res < 8:
        raise CLIError("--res must be >= 8")
    json_path_arg(args, min_n=1)
    report = evaluate_vae(args.ckpt, split=args.split, n=args.n, res=args.res, preset=args.preset)
    print(f"evaluate ae: {report['checkpoint']} (preset {report['config']['preset']}, step "
          f"{report['config']['step']}), split {args.split} (seed {report['seed']}), {args.n} objects, "
          f"grid {args.res}^3, {report['timing']['total_seconds']:.0f} s")
    print(format_table(report))
    _write(report, args)
    return 0


def cmd_evaluate_embed(args):
    from ..evaluation.embed import evaluate_embed, format_embed

    json_path_arg(args)
    report = evaluate_embed(args.embed, split=args.split, n=args.n)
    print(f"evaluate embed: {report['embed']}, split {args.split} (seed {report['seed']}), {report['seconds']:.0f} s")
    print(format_embed(report))
    _write(report, args)
    return 0


def cmd_evaluate_prior(args):
    from ..evaluation.embed import evaluate_prior, format_prior

    json_path_arg(args)
    report = evaluate_prior(args.prior, args.embed, split=args.split, n=args.n, guidance=args.guidance,
                            steps=args.steps, sampler=args.sampler, seed=args.seed)
    print(f"evaluate prior: {report['prior']}, split {args.split} (seed {report['seed']}), {report['seconds']:.0f} s")
    print(format_prior(report))
    _write(report, args)
    return 0


def cmd_evaluate_generate(args):
    from ..evaluation.generate import evaluate_generate, format_generate

    json_path_arg(args)
    report = evaluate_generate(args.pipeline, split=args.split, n=args.n, res=args.res, steps=args.steps,
                               guidance_image=args.guidance_image, guidance_shape=args.guidance_shape, seed=args.seed,
                               sampler=args.sampler, start=args.start)
    print(f"evaluate generate: pipeline {args.pipeline}, split {args.split} (seed {report['seed']}), "
          f"{report['seconds']:.0f} s")
    print(format_generate(report))
    _write(report, args)
    return 0


def cmd_evaluate_diagnose(args):
    from ..evaluation.diagnose import diagnose_generate, format_rows

    json_path_arg(args, min_n=2)
    if args.n_train is not None and args.n_train < 2:
        raise CLIError(f"--n-train must be >= 2, got {args.n_train}")
    report = diagnose_generate(args.pipeline, split=args.split, n=args.n, seed=args.seed, res=args.res,
                               samplers=args.samplers, bounds_cache=args.bounds, n_train=args.n_train)
    print(f"evaluate diagnose: pipeline {args.pipeline}")
    print(format_rows(report))
    _write(report, args)
    return 0


def parse_rescales(text: str) -> list:
    """"0,0.7" -> [0.0, 0.7], each in [0, 1]."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = None
    if not values or not all(0 <= v <= 1 for v in values):
        raise ValueError(f"--rescales {text!r}: expected numbers in [0, 1], e.g. 0,0.7")
    return values


def cmd_evaluate_sweep(args):
    from ..evaluation.diagnose import apply_settings, format_rows, parse_intervals, parse_samplers, sweep_generate
    from ..evaluation.paper import parse_grid

    json_path_arg(args, min_n=2)
    try:
        grid, samplers = parse_grid(args.guidance_grid), args.samplers and parse_samplers(args.samplers)
        intervals, rescales = parse_intervals(args.intervals), parse_rescales(args.rescales)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.apply and args.split == "test":
        raise CLIError("--apply chooses settings: run it on --split val (or train), never on test")
    report = sweep_generate(args.pipeline, split=args.split, n=args.n, seed=args.seed, res=args.res,
                            guidance_grid=grid, samplers=samplers, intervals=intervals, rescales=rescales)
    print(f"evaluate sweep: pipeline {args.pipeline}")
    print(format_rows(report, categories=False))
    _write(report, args)
    if args.apply:
        print(f"wrote the chosen settings into {apply_settings(args.pipeline, report)}")
    return 0


def cmd_evaluate_paper(args):
    from ..data.io import atomic_write_bytes
    from ..evaluation.paper import ABLATIONS, evaluate_paper, format_markdown
    from ..evaluation.protocol import Protocol
    from ..evaluation.report import write_report

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder")
    names = [a.strip() for a in args.ablations.split(",") if a.strip()]
    ablations = ABLATIONS if names == ["all"] else () if names == ["none"] else tuple(names)
    protocol = Protocol(split=args.split, n=args.n, views=args.views, view_res=args.view_res, mesh_res=args.mesh_res,
                        steps=args.steps, seed=args.seed)
    try:
        report = evaluate_paper(args.pipeline, protocol, ablations, features=args.fid_features,
                                guidance_grid=args.guidance_grid, vae_with=args.vae_with, vae_without=args.vae_without,
                                attn_res=args.attn_res, attn_res_vaes=args.attn_res_vaes, device=args.device)
    except ValueError as e:
        raise CLIError(str(e)) from None
    md = format_markdown(report)
    print(md)
    write_report(report, out / "paper_eval.json")
    atomic_write_bytes(out / "paper_eval.md", md.encode())
    print(f"wrote {out / 'paper_eval.json'} and {out / 'paper_eval.md'}")
    return 0


def add_parsers(sub) -> None:
    ev = group(sub, "evaluate", "metrics of a trained stage on held-out toy objects", "stage")

    eva = ev.add_parser("ae", help="the triplane VAE: IoU, Chamfer-L1, F-score@0.02, colour PSNR")
    eva.add_argument("--ckpt", default=None, help="VAE checkpoint folder (default: the shipped course VAE)")
    eva.add_argument("--split", default="test", choices=SPLITS, help=SPLIT_HELP)
    eva.add_argument("--n", type=int, default=56, help="objects, 4 per category at 56 (default %(default)s)")
    eva.add_argument("--res", type=int, default=128, help="marching-cubes grid resolution (default %(default)s)")
    eva.add_argument("--json", default=None, help="write the full report (per object, per category) here")
    eva.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    eva.add_argument("--preset", default=None, help="require the checkpoint to be of this preset")
    eva.set_defaults(func=cmd_evaluate_ae)

    def common(q):
        q.add_argument("--embed", default=None, help="output folder of train embed (default: the shipped course towers)")
        q.add_argument("--split", default="test", choices=SPLITS, help=SPLIT_HELP)
        q.add_argument("--n", type=int, default=112, help="objects, 8 per category at 112 (default %(default)s)")
        q.add_argument("--json", default=None, help="write the full report here")
        q.add_argument("--overwrite", action="store_true", help="replace an existing --json file")

    eve = ev.add_parser("embed", help="the towers: image -> shape retrieval, category accuracy")
    common(eve)
    eve.set_defaults(func=cmd_evaluate_embed)

    evp = ev.add_parser("prior", help="the prior: cosine to the true shape embedding, retrieval")
    common(evp)
    evp.add_argument("--prior", default=None, help="prior folder (default: the shipped course prior)")
    evp.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1: none)")
    evp.add_argument("--steps", type=int, default=None, help="sampling steps (default: the prior's config)")
    evp.add_argument("--sampler", default=None, choices=SAMPLERS,
                     help="diffusers scheduler for sampling (default: the prior's config)")
    evp.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default %(default)s)")
    evp.set_defaults(func=cmd_evaluate_prior)

    evg = ev.add_parser("generate", help="image -> mesh on held-out objects: IoU, Chamfer, category, image similarity")
    evg.add_argument("--pipeline", default="course", help=PIPELINE_HELP)
    evg.add_argument("--split", default="test", choices=SPLITS, help=SPLIT_HELP)
    evg.add_argument("--n", type=int, default=56, help="objects, 4 per category at 56 (default %(default)s)")
    evg.add_argument("--res", type=int, default=64, help="marching-cubes grid (default %(default)s)")
    evg.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    evg.add_argument("--sampler", default=None, choices=SAMPLERS, help="default: the checkpoint's")
    evg.add_argument("--guidance-image", type=float, default=None, help="image guidance scale (default: the checkpoint's)")
    evg.add_argument("--guidance-shape", type=float, default=None, help="shape guidance scale (default: the checkpoint's)")
    evg.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    evg.add_argument("--start", default="noise", choices=STARTS,
                     help="where the UNet starts with the prior: noise (the paper; default) or regression (its start "
                          "estimate noised partway, when the UNet has one)")
    evg.add_argument("--json", default=None, help="write the full report here")
    evg.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    evg.set_defaults(func=cmd_evaluate_generate)

    def split_n_seed(q, split):
        q.add_argument("--pipeline", default="course", help=PIPELINE_HELP)
        q.add_argument("--split", default=split, choices=SPLITS, help=SPLIT_HELP)
        q.add_argument("--n", type=int, default=56, help="objects, 4 per category at 56 (default %(default)s)")
        q.add_argument("--res", type=int, default=64, help="marching-cubes grid (default %(default)s)")
        q.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
        q.add_argument("--json", default=None, help="write the full report here")
        q.add_argument("--overwrite", action="store_true", help="replace an existing --json file")

    evd = ev.add_parser("diagnose", help="where generation loses quality: each stage replaced by the truth in turn "
                                         "(true shape embedding, true latent noised halfway, ...); val split")
    split_n_seed(evd, "val")
    evd.add_argument("--samplers", action="store_true", help="also the sampler rows (twice the steps; DPM-Solver++ 15, or Euler at half the steps)")
    evd.add_argument("--bounds", default=None, metavar="DIR",
                     help="also the bounds (retrieval, regression, the UNet's loss per noise band); the UNet's "
                          "training objects are regenerated once into DIR")
    evd.add_argument("--n-train", type=int, default=None,
                     help="with --bounds: training objects to use (default: as many as the UNet trained on)")
    evd.set_defaults(func=cmd_evaluate_diagnose)

    evs = ev.add_parser("sweep", help="choose guidance scales, sampler and steps on the val split")
    split_n_seed(evs, "val")
    evs.add_argument("--guidance-grid", default="1,2,3,5x1,2,3", help="image scales x shape scales (default %(default)s)")
    evs.add_argument("--samplers", default=None,
                     help="sampler:steps, the first used for the guidance pass (default: ddim:25,ddim:50,dpm:10,"
                          "dpm:20 for a DDPM UNet, euler:20,euler:10,euler:40 for a rectified-flow one)")
    evs.add_argument("--intervals", default="0-1",
                     help="noise levels t/T where guidance applies, LO-HI pairs tried with the best pair and "
                          "sampler, e.g. 0-1,0-0.8,0.2-1 (default %(default)s: everywhere)")
    evs.add_argument("--rescales", default="0",
                     help="guidance rescale values in [0, 1] tried with each interval, e.g. 0,0.7 (default %(default)s)")
    evs.add_argument("--apply", action="store_true",
                     help="write the chosen settings into the pipeline's unet/config.json (a folder, not a preset)")
    evs.set_defaults(func=cmd_evaluate_sweep)

    evr = ev.add_parser("paper", help="the paper's protocol: FID, CLIP similarity, IoU/CD/F, ablations; "
                                      "JSON + markdown tables beside the paper's numbers")
    evr.add_argument("--pipeline", default="course", help=PIPELINE_HELP)
    evr.add_argument("--out", default="outputs/paper_eval", help="folder for paper_eval.json/.md (default %(default)s)")
    evr.add_argument("--split", default="test", choices=SPLITS, help=SPLIT_HELP)
    evr.add_argument("--n", type=int, default=56, help="objects, 4 per category at 56 (default %(default)s)")
    evr.add_argument("--views", type=int, default=4, help="rendered views per asset (default %(default)s)")
    evr.add_argument("--view-res", type=int, default=128, help="render resolution (default %(default)s)")
    evr.add_argument("--mesh-res", type=int, default=64, help="marching-cubes grid (default %(default)s)")
    evr.add_argument("--steps", type=int, default=25,
                     help="steps of the checkpoint's sampler (default %(default)s, the protocol's)")
    evr.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    evr.add_argument("--ablations", default="prior",
                     help="comma list of prior, guidance, attention, attn_res; or all / none (default %(default)s)")
    evr.add_argument("--guidance-grid", default="1,2,5x1,2", help="image scales x shape scales (default %(default)s)")
    evr.add_argument("--fid-features", default="auto", choices=["auto", "inception", "tower"],
                     help="Inception-v3 when its weights are here (auto), else the pipeline's open_clip tower")
    evr.add_argument("--vae-with", default=None, help="attention ablation: VAE with attention (default: the pipeline's)")
    evr.add_argument("--vae-without", default=None,
                     help="attention ablation: VAE without (default: shipped vae_course_noattn)")
    evr.add_argument("--attn-res", type=int, nargs="+", default=None, help="r'' values to time (default: all valid)")
    evr.add_argument("--attn-res-vaes", nargs="+", default=None, help="VAE checkpoints trained at other r''")
    evr.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    evr.set_defaults(func=cmd_evaluate_paper)
