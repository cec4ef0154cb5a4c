"""``compress3d-lite``: the command line. One file per command group; each command imports what it
needs only when it runs, so ``compress3d-lite --help`` imports no torch.

    compress3d-lite generate IMAGE... -o OUT_DIR [--format glb|ply|obj] [--steps N] [--seed S] [--no-prior] [--res R]
                                                        the main job: one image in, one coloured mesh out
    compress3d-lite reconstruct MESH_OR_NPZ [--ckpt CKPT] -o OUT.glb [--res R] [--seed S] [--preset P]
    compress3d-lite demo [--out DIR]                    an offline HTML page of a few toy objects and an imported mesh
    compress3d-lite data toyshapes --n N --out DIR [--views V] [--seed S] [--res R] [--workers K] [--png]
    compress3d-lite data import PATH... --out DIR [--views V] [--seed S] [--res R]
    compress3d-lite data objaverse (--uids FILE | --n N) --out DIR [--source DIR] [--workers K] [--filter CLS_DIR]
    compress3d-lite data quality-filter train --data DIR --labels CSV --out CLS_DIR
    compress3d-lite data view OBJECT.npz [-o OUT.html]
    compress3d-lite data sample-meshes --out DIR       our own small mesh files (data_samples/meshes)
    compress3d-lite train {ae,embed,prior,diffusion} --preset {lite,course,colab_t4,a100_full} --out DIR [--resume]
    compress3d-lite train {ae,embed,prior,diffusion} --preset P --dry-run [--json FILE]
    compress3d-lite evaluate {ae,embed,prior,generate,paper} [--split test] [--json OUT] [--n N]

    generate.py   generate, reconstruct, demo       data.py       data ...
    train.py      train ...                         evaluate.py   evaluate ...

Bad input ends with a one-line ``error: <file>: <problem>`` on stderr and exit code 2.
A command group without a subcommand (``compress3d-lite``, ``compress3d-lite train``) prints its help.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import data, evaluate, generate, train
from .common import EXIT_BAD_INPUT, CLIError, in_flag_terms, option_names, print_help_of


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="compress3d-lite",
                                description="compress3d_lite: one image in, one coloured 3D mesh out, through "
                                            "the four stages of Compress3D (arXiv 2403.13524).",
                                epilog="Start with: compress3d-lite generate IMAGE -o OUT_DIR. "
                                       "'compress3d-lite COMMAND --help' describes each command.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.set_defaults(func=print_help_of(p))
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    generate.add_parsers(sub)  # generate (the main job), reconstruct, demo
    data.add_parsers(sub)
    train.add_parsers(sub)
    evaluate.add_parsers(sub)
    return p


def is_user_error(e: BaseException) -> bool:
    """Errors that mean bad input or an impossible request (a message naming the thing, exit 2),
    not a bug (a traceback). Their classes are imported only once one was raised."""
    if isinstance(e, (CLIError, FileNotFoundError)):  # FileNotFoundError: also samples.SamplesNotFound
        return True
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data.images import ImageError
    from ..data.io import DataFormatError, OutputError
    from ..data.mesh_import import MeshImportError
    from ..models.image_tower import PretrainedWeightsUnavailable
    from ..training.run_folder import TrainingError

    return isinstance(e, (CheckpointError, ConfigError, ImageError, DataFormatError, MeshImportError, OutputError,
                          PretrainedWeightsUnavailable, TrainingError))


def os_error_line(e: OSError) -> str:
    """An error of the machine (a full disk, a folder we may not write, a file that vanished) as
    one line naming the file: not our bug, and not worth a traceback."""
    where = e.filename if e.filename is not None else ""
    return f"{where}: {e.strerror or e}" if where else f"{type(e).__name__}: {e.strerror or e}"


def one_line_warnings() -> None:
    """Library warnings (Pillow's decompression-bomb warning, a mesh outlier dropped on import)
    print as one line, ``warning: <message>``, instead of Python's two lines with a source line."""
    import warnings

    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"warning: {message}\n"


class _PrintLogs(logging.Handler):
    """Prints each log line on the stdout of the moment (pytest's capture, a redirected stream)."""

    def emit(self, record):
        print(self.format(record), flush=True)


def print_library_logs() -> None:
    """The library logs what it does (``logging.getLogger("compress3d_lite...")``: a run's start, the
    files it wrote) instead of printing; the command line prints those INFO lines on stdout, as
    they are. A notebook sees them only when it asks (``logging.basicConfig(level=logging.INFO)``)."""
    logger = logging.getLogger("compress3d_lite")
    if not any(isinstance(h, _PrintLogs) for h in logger.handlers):
        logger.addHandler(_PrintLogs())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def interrupt_on_sigterm() -> None:
    """SIGTERM (``kill``, a job scheduler, a closed Colab cell) stops a command the way Ctrl-C
    does: the same clean-up runs (worker pools end, temporary files go) and the same message says
    what to run next."""
    import signal

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def interrupted(args) -> str:
    """The line printed on an interrupt: what state the output is in and what to run."""
    from pathlib import Path

    if args.command == "train" and getattr(args, "out", None) and not getattr(args, "dry_run", False):
        ckpt = Path(args.out) / "checkpoint" / "config.json"
        if ckpt.exists():
            import json

            step = json.loads(ckpt.read_text()).get("step")
            return (f"interrupted: {args.out} holds a checkpoint at step {step}; run the same command with --resume "
                    "to continue it exactly")
        again = " with --overwrite" if (Path(args.out) / "log.jsonl").exists() else ""
        return f"interrupted before the first checkpoint: run the same command{again} to start over"
    if args.command == "data" and getattr(args, "data_command", None) in ("toyshapes", "import", "objaverse"):
        return f"interrupted: {args.out} is unfinished; run the same command again to finish it"
    if args.command == "generate":
        return (f"interrupted: the meshes written so far are in {args.output}; run the same command with --overwrite "
                "to redo them all")
    return "interrupted"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    one_line_warnings()
    print_library_logs()
    interrupt_on_sigterm()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(interrupted(args), file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; use smaller sizes (--res, --batch-size, --points)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:
        if isinstance(e, FileNotFoundError) and not e.filename:  # samples.SamplesNotFound carries its own message
            print(f"error: {e}", file=sys.stderr)
        else:
            print(f"error: {os_error_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        if not is_user_error(e):
            raise
        print(f"error: {in_flag_terms(str(e), option_names(parser))}", file=sys.stderr)  # the library's words -> flags
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
