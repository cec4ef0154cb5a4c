"""``compress3d-lite data ...``: make, import and view datasets (toy shapes, real meshes,
Objaverse, the quality filter, our sample meshes)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .common import EXIT_BAD_INPUT, CLIError, add_sampling_args, group, spec_from_args


def cmd_toyshapes(args):
    from ..data.io import OutputError, writing_into
    from ..data.render import ray_backend
    from ..data.toyshapes import write_toyshapes

    if args.n < 1:
        raise CLIError("--n must be >= 1")
    spec = spec_from_args(args)
    print(f"toyshapes: {args.n} objects, seed {args.seed}, {spec.views} views at {spec.resolution}px, "
          f"ray caster: {ray_backend()}, {args.workers} worker(s)")
    t0 = time.time()
    try:
        with writing_into(args.out, "data", what="data command"):
            write_toyshapes(args.n, args.out, spec, seed=args.seed, workers=args.workers, png=args.png,
                            start=args.start)
    except OutputError as e:
        raise CLIError(str(e)) from None  # main shows its backticked arguments as flags
    dt = time.time() - t0
    print(f"wrote {args.n} objects to {args.out} in {dt:.1f} s ({args.n / dt:.1f} objects/s)")
    return 0


def cmd_import(args):
    from ..data.io import OutputError, writing_into
    from ..data.mesh_import import import_files

    spec = spec_from_args(args)
    try:
        with writing_into(args.out, "data", what="data command"):
            entries, failures = import_files(args.paths, args.out, spec, seed=args.seed)
    except OutputError as e:
        raise CLIError(str(e)) from None  # main shows its backticked arguments as flags
    if entries:
        print(f"imported {len(entries)} object(s) into {args.out}")
    else:
        print("imported nothing; no output written")
    if failures:
        print(f"{len(failures)} of {len(entries) + len(failures)} file(s) failed:", file=sys.stderr)
        for path, message in failures:
            print(f"  error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def cmd_objaverse(args):
    """Objaverse (or --source DIR) -> OUT/objects/<uid>.npz + index.json + manifest.json, resumable."""
    from ..data.objaverse import ObjaverseError, prepare

    spec = spec_from_args(args)
    if args.workers < 1 or args.timeout < 0:
        raise CLIError("--workers must be >= 1 and --timeout >= 0")
    quality = None
    if args.filter is not None:  # a model: loaded here, so the data package never imports models
        from ..scaling.quality_filter import QualityFilter

        quality = QualityFilter.load(args.filter)
    try:
        m = prepare(args.out, spec, source=args.source, uids_file=args.uids, n=args.n, shuffle=args.shuffle,
                    seed=args.seed, workers=args.workers, timeout=args.timeout, quality=quality,
                    threshold=args.threshold)
    except ObjaverseError as e:
        raise CLIError(str(e)) from None  # main shows its backticked arguments as flags
    c = m["counts"]
    print(f"objaverse: {c['requested']} requested: {c['done_now']} done now, {c['skipped_done']} skipped (done), "
          f"{c['failed']} failed, {c['filtered']} filtered; {c['total_ok']} objects in "
          f"{Path(args.out) / 'index.json' if c['total_ok'] else 'no index.json'} ({m['seconds']:.1f} s)")
    for f in m["failures"][:20]:
        print(f"  error: {f['reason']}", file=sys.stderr)
    if len(m["failures"]) > 20:
        print(f"  ... {len(m['failures']) - 20} more in {Path(args.out) / 'manifest.json'}", file=sys.stderr)
    return EXIT_BAD_INPUT if c["failed"] else 0


def cmd_quality_train(args):
    from ..scaling.quality_filter import QualityError, train_filter

    try:
        r = train_filter(args.data, args.labels, args.out, embed_dir=args.embed, seed=args.seed)
    except QualityError as e:
        raise CLIError(str(e)) from None
    print(f"quality filter: {r['n_train']} train / {r['n_val']} held-out objects ({r['n_good']} good, "
          f"{r['n_missing']} labels without an object); accuracy train {r['train_accuracy']:.2f}, "
          f"held-out {r['val_accuracy']:.2f} (majority class {r['val_majority_baseline']:.2f}); wrote {args.out}")
    return 0


def object_figures(obj: dict, title: str) -> list:
    """The viewers of one object: points | occupancy (| view 0), and its views as a grid."""
    from .. import viz

    figs = [viz.object_figure(obj, title=title)]
    if "images" in obj:
        figs.append(viz.image_grid(list(obj["images"]) + list(obj["depths"]),
                                   titles=[f"view {i}" for i in range(len(obj["images"]))]
                                   + [f"depth {i}" for i in range(len(obj["depths"]))],
                                   cols=len(obj["images"])))
    return figs


def cmd_view(args):
    from .. import viz
    from ..data.io import load_object, prepare_output_file

    out = Path(args.output or Path(args.object).with_suffix(".html"))
    prepare_output_file(out, args.overwrite, inputs=[args.object])
    obj = load_object(args.object)
    print(f"wrote {viz.save_html(object_figures(obj, Path(args.object).name), out)}")
    return 0


def cmd_sample_meshes(args):
    from ..data.io import OutputError
    from ..data.sample_meshes import write_sample_meshes

    try:
        written = write_sample_meshes(args.out, overwrite=args.overwrite)
    except FileExistsError as e:
        raise OutputError(f"{e.filename}: exists; pass --overwrite to replace it, or choose another --out") from None
    for p in written:
        print(f"wrote {p}")
    return 0


def add_parsers(sub) -> None:
    data = group(sub, "data", "make, import and view datasets", "data_command")

    t = data.add_parser("toyshapes", help="generate procedural coloured objects")
    t.add_argument("--n", type=int, required=True, help="number of objects")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--start", type=int, default=0, help="index of the first object (default %(default)s)")
    t.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    t.add_argument("--png", action="store_true", help="also save the rendered views as PNG files")
    add_sampling_args(t)
    t.set_defaults(func=cmd_toyshapes)

    i = data.add_parser("import", help="import GLB/glTF/OBJ/PLY meshes or scenes")
    i.add_argument("paths", nargs="+", help="mesh files or folders")
    i.add_argument("--out", required=True, help="output folder")
    add_sampling_args(i)
    i.set_defaults(func=cmd_import)

    o = data.add_parser("objaverse", help="Objaverse (or a local folder of meshes) -> a resumable dataset folder",
                        description="Import Objaverse objects (the objaverse package) or the mesh files of "
                        "--source DIR into OUT/objects/<uid>.npz, OUT/index.json and OUT/manifest.json. "
                        "Resumable: finished objects are skipped. Exit code 0 when every object succeeded, "
                        "2 when any failed (the others are still written; see OUT/manifest.json).")
    which = o.add_mutually_exclusive_group(required=True)
    which.add_argument("--uids", help="file with one uid per line (# comments)")
    which.add_argument("--n", type=int, help="the first N uids (sorted; --shuffle: seeded random order)")
    o.add_argument("--out", required=True, help="output folder")
    o.add_argument("--source", default=None,
                   help="offline: a folder of GLB/glTF/OBJ/PLY files (uid = relative path without suffix, / -> __)")
    o.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    o.add_argument("--shuffle", action="store_true", help="with --n: a random (seeded) choice, not the first sorted")
    o.add_argument("--timeout", type=float, default=300, help="seconds per object, 0: none (default %(default)s)")
    o.add_argument("--filter", default=None, help="a quality-filter folder: low scorers stay out of index.json")
    o.add_argument("--threshold", type=float, default=None, help="filter threshold (default: the classifier's, 0.5)")
    add_sampling_args(o)
    o.set_defaults(func=cmd_objaverse)

    q = group(data, "quality-filter", "an MLP that scores objects good/bad", "quality_command")
    qt = q.add_parser("train", help="train it on labelled objects of a dataset folder")
    qt.add_argument("--data", required=True, help="dataset folder holding the labelled objects")
    qt.add_argument("--labels", required=True, help="CSV of uid,label (good/bad or 1/0)")
    qt.add_argument("--out", required=True, help="output folder: model.safetensors + config.json")
    qt.add_argument("--embed", default=None, help="towers whose shape embeddings are the features (default: shipped)")
    qt.add_argument("--seed", type=int, default=0, help="seed of the held-out split and the MLP (default %(default)s)")
    qt.set_defaults(func=cmd_quality_train)

    v = data.add_parser("view", help="write an offline HTML viewer of one object .npz")
    v.add_argument("object", help="an object .npz")
    v.add_argument("-o", "--output", help="output .html (default: next to the object)")
    v.add_argument("--overwrite", action="store_true", help="replace the output .html if it exists (default: refuse)")
    v.set_defaults(func=cmd_view)

    s = data.add_parser("sample-meshes", help="write our own small example meshes (OBJ+MTL+PNG, GLB, PLY)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--overwrite", action="store_true", help="replace sample files already in the folder (default: refuse)")
    s.set_defaults(func=cmd_sample_meshes)
