"""What the command modules share: the one-line user error, bare groups that print their help,
and the sampling options of the data commands. Imports nothing heavy (``--help`` stays fast)."""

from __future__ import annotations

import re

EXIT_BAD_INPUT = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


SEED_RANGE = (0, 2 ** 64 - 1)  # what torch.Generator.manual_seed and numpy's generators take


def check_seed(seed, n: int = 1, option: str = "--seed") -> None:
    """Seeds seed .. seed + n - 1 must all be valid generator seeds."""
    if seed is not None and not (SEED_RANGE[0] <= seed and seed + n - 1 <= SEED_RANGE[1]):
        raise CLIError(f"{option} must be in 0..2**64-1" + (f" (and {option} + {n - 1} too, one seed per image)"
                                                           if n > 1 else "") + f", got {seed}")


# a library argument whose option has another name (the rest: ``seed`` is --seed, ``batch_size`` --batch-size)
OPTION_OF = {"num_inference_steps": "--steps", "mesh_resolution": "--res", "image_guidance_scale": "--guidance-image",
             "shape_guidance_scale": "--guidance-shape", "use_prior=False": "--no-prior", "out_dir": "--out",
             "uids_file": "--uids", "spec": "--views/--res/--points/--occ"}
# the pipeline's checks name its arguments bare (``num_inference_steps must be ...``): generate's words for them
GENERATE_FLAGS = {**{name: OPTION_OF[name] for name in ("num_inference_steps", "mesh_resolution", "image_guidance_scale",
                                                        "shape_guidance_scale", "use_prior=False")},
                  "batch_size": "--batch-size", "format": "--format", "sampler": "--sampler",
                  "prior_steps": "--prior-steps", "start": "--start"}


def as_flags(error: Exception, flags: dict = GENERATE_FLAGS) -> CLIError:
    """A library error that names Python arguments (``num_inference_steps must be ...``) as the
    command line's error naming its options (``--steps must be ...``)."""
    text = str(error)
    for name, flag in flags.items():
        text = re.sub(rf"\b{name}\b", flag, text)
    return CLIError(text)


_NAMED = re.compile(r"`(\w+)(?:=([^`\s]+))?`")


def in_flag_terms(text: str, options: set) -> str:
    """A library message in the command line's words: the library names an argument in backticks
    (``pass `overwrite=True` to replace it``, ```seed` 3 differs```); each one that is an option of
    the command line (``options``: their dest names) becomes that option (``--overwrite``,
    ``--seed 3``). Other backticked words (```train diffusion```) stay as they are."""
    def option(m):
        name, value = m.group(1), m.group(2)
        if f"{name}={value}" in OPTION_OF:
            return OPTION_OF[f"{name}={value}"]
        flag = OPTION_OF.get(name) or (f"--{name.replace('_', '-')}" if name in options else None)
        if flag is None:
            return m.group(0)
        return flag if value in (None, "True") else f"{flag} {value}"
    return _NAMED.sub(option, text)


def option_names(parser) -> set:
    """The dest names of every option of ``parser`` and its subcommands (what in_flag_terms maps)."""
    names, todo = set(), [parser]
    while todo:
        p = todo.pop()
        for action in p._actions:
            if action.option_strings:
                names.add(action.dest)
            todo.extend(getattr(action, "choices", None) and isinstance(action.choices, dict)
                        and action.choices.values() or [])
    return names


def print_help_of(parser):
    """The command of a bare group (``compress3d-lite``, ``compress3d-lite train``): its help, exit 0."""
    def show(args):
        parser.print_help()
        return 0
    return show


def group(sub, name: str, help: str, dest: str):
    """A command group: a subparser whose own subcommands live under ``dest``; bare, it prints its help."""
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(func=print_help_of(parser))
    return parser.add_subparsers(dest=dest, metavar="COMMAND")


def add_sampling_args(p, views: int = 4) -> None:
    p.add_argument("--views", type=int, default=views, help="rendered views per object (default %(default)s)")
    p.add_argument("--res", type=int, default=128, help="view resolution in pixels (default %(default)s)")
    p.add_argument("--points", type=int, default=4096, help="surface points per object (default %(default)s)")
    p.add_argument("--occ", type=int, default=16384,
                   help="occupancy queries per object, half uniform, half near the surface (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")


def spec_from_args(args):
    """The SampleSpec of the sampling options, or a CLIError naming the bad option."""
    from ..config import SampleSpec

    spec = SampleSpec(views=args.views, resolution=args.res, n_points=args.points,
                      n_uniform=args.occ // 2, n_near=args.occ - args.occ // 2)
    if spec.views < 0 or spec.resolution < 8 or spec.n_points < 1 or args.occ < 2:
        raise CLIError("--views must be >= 0, --res >= 8, --points >= 1 and --occ >= 2")
    if spec.views > 64 or spec.resolution > 2048 or spec.n_points > 10 ** 7 or args.occ > 10 ** 8:
        raise CLIError("--views must be <= 64, --res <= 2048, --points <= 10^7 and --occ <= 10^8 (one object's "
                       "sampling must fit in memory)")
    check_seed(args.seed)
    return spec


def json_path_arg(args, min_n: int = 2) -> None:
    """``--json`` must not be a folder, nor an existing file unless ``--overwrite``; ``--n`` at least ``min_n``."""
    from ..data.io import prepare_output_file

    if args.json:
        prepare_output_file(args.json, getattr(args, "overwrite", False))
    if args.n < min_n:
        raise CLIError(f"--n must be >= {min_n}")
