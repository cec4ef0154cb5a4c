"""Data preparation at scale: Objaverse (or a local folder of meshes) -> one resumable dataset folder.

    compress3d-lite data objaverse --n 1000 --out data/objaverse --workers 8      # online: the objaverse package
    compress3d-lite data objaverse --uids uids.txt --out data/objaverse          # chosen uids, one a line
    compress3d-lite data objaverse --source glbs/ --n 500 --out data/local       # offline: a folder of files

    manifest = prepare("data/local", SampleSpec(), source="glbs/", n=500, workers=8)

Each object goes through the real-mesh import (``mesh_import.import_mesh``) into

    OUT/objects/<uid>.npz   one object (io.save_object: temporary file + rename, never half-written)
    OUT/index.json          every finished object that passes the filter: an ordinary dataset folder
    OUT/manifest.json       settings, counts, one line per failure, failures by kind, seconds

The run is resumable: an object whose ``.npz`` is already there is skipped ("skipped (done)"), so
re-running the same command after Ctrl-C or a crash finishes the rest (and retries the failures).
One bad object (a broken file, a timeout, any exception, a worker process that dies) is recorded
and skipped. The seed of an object comes from (seed, uid), so the bytes written do not depend on
the number of workers or the order. Offline, the uid of a file is its path relative to SOURCE
without the suffix, "/" replaced by "__" (``toys/mug.glb`` -> ``toys__mug``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import re
import signal
import threading
import time
import zipfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..config import SampleSpec
from .io import REQUIRED, atomic_write_bytes, end_with_parent, read_index, save_object, write_index
from .mesh_import import SUPPORTED, MeshImportError, _one_line, import_mesh
from .occupancy import occupancy_method
from .render import ray_backend

MANIFEST = "compress3d_lite/objaverse-manifest-v1"
UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")  # characters not allowed in a uid (it names a file)
DOWNLOAD_CHUNK = 64  # uids per objaverse.load_objects call (downloads interleave with imports)
NOT_INSTALLED = ("the objaverse package is not installed: pip install -e '.[full]' "
                 "(or pass `source`, a local folder of GLBs)")


class ObjaverseError(ValueError):
    """Bad input found before anything is written; the message is one line naming the file."""


class ObjectTimeout(TimeoutError):
    pass


# ------------------------------------------------------------------------------------------
# which objects


def read_uids(path) -> list:
    """One uid per line of ``path`` (blank lines and ``#`` comments ignored, duplicates dropped)."""
    path = Path(path)
    if not path.is_file():
        raise ObjaverseError(f"{path}: no such uids file")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(errors="replace").splitlines()]
    uids = list(dict.fromkeys(u for u in lines if u))
    if not uids:
        raise ObjaverseError(f"{path}: no uids in the file (one uid per line, # for comments)")
    return uids


def source_files(folder) -> dict:
    """{uid: path} of every GLB/glTF/OBJ/PLY file under ``folder`` (recursively), sorted by path.
    The uid is the relative path without suffix, "/" -> "__", other unsafe characters -> "_";
    a clash (cow.obj and cow.glb) gives the later file ``<uid>_<ext>`` (then ``_2``, ``_3`` ...)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ObjaverseError(f"{folder}: no such folder (`source` wants a folder of mesh files)")
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED)
    if not files:
        raise ObjaverseError(f"{folder}: no {'/'.join(SUPPORTED)} files in the folder")
    found = {}
    for f in files:
        uid = UNSAFE.sub("_", "__".join(f.relative_to(folder).with_suffix("").parts)).lstrip(".") or "_"
        base, k = f"{uid}_{f.suffix[1:].lower()}", 2
        uid = uid if uid not in found else base
        while uid in found:
            uid, k = f"{base}_{k}", k + 1
        found[uid] = f
    return found


def choose(available: list, wanted: list | None, n: int | None, shuffle: bool, seed: int) -> list:
    """The uids to process: ``wanted`` as given, or the first ``n`` of ``available`` sorted
    (``shuffle``: in a seeded random order)."""
    if wanted is not None:
        return wanted
    order = sorted(available)
    if shuffle:
        order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    return order[:n]


def object_seed(seed: int, uid: str) -> int:
    """The sampling seed of object ``uid`` in a run with ``seed`` (independent of order and workers)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{uid}".encode()).digest()[:8], "little")


def is_finished(npz: Path) -> bool:
    """True when ``npz`` exists and its zip directory lists the arrays of an object. Objects are
    written atomically, so only a foreign or damaged file fails this (and is then redone)."""
    try:
        with zipfile.ZipFile(npz) as zf:
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return all(f"{k}.npy" in names for k in REQUIRED)


# ------------------------------------------------------------------------------------------
# one object (runs in a worker process)


@contextmanager
def time_limit(seconds: float):
    """Raise ObjectTimeout after ``seconds`` (SIGALRM: main thread on Unix only, else no limit;
    a call stuck inside C code is interrupted when it returns to Python)."""
    if not seconds or not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise ObjectTimeout(f"timed out after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def failure_kind(e: BaseException, path) -> str:
    """What went wrong, without the specifics: groups failures in the manifest."""
    if isinstance(e, ObjectTimeout):
        return "timeout"
    if isinstance(e, MeshImportError):
        problem = str(e).removeprefix(f"{path}: ").split(" (")[0]
        return re.sub(r"\d+", "N", problem)
    return type(e).__name__


def process_one(job: dict) -> dict:
    """Import ``job["path"]`` into ``job["npz"]``; never raises (a failure is returned)."""
    uid, path = job["uid"], Path(job["path"])
    try:
        with time_limit(job["timeout"]):
            example = import_mesh(path, SampleSpec.from_dict(job["spec"]), job["seed"])
        save_object(job["npz"], example)
    except Exception as e:  # MeshImportError, a timeout, a bug, an exotic file: report, go on
        reason = str(e) if isinstance(e, MeshImportError) else f"{path}: {_one_line(e)}"
        return {"uid": uid, "source": str(path), "reason": reason, "kind": failure_kind(e, path)}
    return {"uid": uid, "source": str(path), "entry": {
        "file": f"objects/{uid}.npz", "uid": uid, "source": path.name, "path": str(path),
        "n_parts": len(example["part_names"]), "inside_fraction": round(float(example["occ_labels"].mean()), 4)}}


def run_jobs(jobs, workers: int):
    """Yield ``process_one(job)`` for every job: inline with one worker, else on a spawn-safe
    process pool with at most 2 jobs per worker in flight. A job whose worker process dies
    (segfault, out of memory) is retried once in a fresh pool, then recorded as failed."""
    if workers <= 1:
        yield from map(process_one, jobs)
        return

    def new_pool():  # workers ignore Ctrl-C: the main process stops the queue and waits for them
        return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=end_with_parent,
                                   initargs=(True,))

    jobs, retry, running, pool = iter(jobs), [], {}, new_pool()
    try:
        while True:
            while len(running) < 2 * workers:
                job = retry.pop() if retry else next(jobs, None)
                if job is None:
                    break
                running[pool.submit(process_one, job)] = job
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                for job in running.values():  # which one killed the pool is unknown: all suspects
                    if job.get("retried"):
                        yield {"uid": job["uid"], "source": str(job["path"]), "kind": "worker process died",
                               "reason": f"{job['path']}: worker process died (crash or out of memory)"}
                    else:
                        retry.append({**job, "retried": True})
                running.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()
                continue
            for f in done:
                running.pop(f)
                yield f.result()
    finally:  # on Ctrl-C: drop the queue, let the objects in flight finish (a second Ctrl-C stops waiting)
        pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------------
# the run


def _online_paths(uids: list, workers: int):
    """Yield (uid, local path or None, failure reason or None), downloading in chunks."""
    import objaverse  # optional (pip install -e '.[full]'): only the online download needs it

    for k in range(0, len(uids), DOWNLOAD_CHUNK):
        chunk = uids[k:k + DOWNLOAD_CHUNK]
        try:
            paths = objaverse.load_objects(uids=chunk, download_processes=workers)
        except Exception as e:
            paths, why = {}, f"download failed ({_one_line(e)})"
        else:
            why = "download failed (not returned by objaverse.load_objects)"
        for uid in chunk:
            yield (uid, paths[uid], None) if paths.get(uid) else (uid, None, why)


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse to resume into a folder made with other sampling settings (or by another command)."""
    if out.exists() and not out.is_dir():
        raise ObjaverseError(f"{out}: exists and is not a folder")
    if (out / "index.json").exists() and read_index(out, allow_unfinished=True).get("generator") != "objaverse":
        raise ObjaverseError(f"{out / 'index.json'}: a dataset made by another command; use another `out_dir`")
    try:
        old = json.loads((out / "manifest.json").read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    was, now = {"seed": old.get("seed"), **(old.get("spec") or {})}, {"seed": settings["seed"], **settings["spec"]}
    changed = [f"{k} {was.get(k)} -> {now[k]}" for k in now if was.get(k) != now[k]]
    if changed:
        raise ObjaverseError(f"{out / 'manifest.json'}: made with other settings ({', '.join(changed)}); use the "
                             "same `spec` and `seed` to resume, or another `out_dir`")


def _entry_from_file(npz: Path) -> dict | None:
    """The index.json entry of an object made by an earlier run (None: unreadable)."""
    try:
        with np.load(npz, allow_pickle=False) as z:
            return {"file": f"objects/{npz.name}", "uid": npz.stem, "source": str(z["source"]),
                    "n_parts": len(z["part_names"]), "inside_fraction": round(float(z["occ_labels"].mean()), 4)}
    except Exception:
        return None


def _index_entries(out: Path, fresh: dict, qfilter, threshold) -> tuple:
    """(index.json entries, filtered objects): every finished object in the folder, this run's
    and earlier runs', minus those the quality filter (if any) scores below ``threshold``."""
    previous = {e.get("uid"): e for e in read_index(out, allow_unfinished=True)["objects"]} if (out / "index.json").exists() else {}
    entries = [fresh.get(f.stem) or previous.get(f.stem) or _entry_from_file(f)
               for f in sorted((out / "objects").glob("*.npz"))]
    entries = [e for e in entries if e is not None]
    if qfilter is None or not entries:
        return entries, []
    kept, filtered = [], []
    for e, s in zip(entries, qfilter.score([out / e["file"] for e in entries])):
        e["quality_score"] = round(float(s), 4)
        if s >= threshold:
            kept.append(e)
        else:
            filtered.append({"uid": e["uid"], "source": e.get("path", e["source"]), "score": e["quality_score"],
                             "reason": f"filtered: score {s:.2f} < {threshold:g}"})
    return kept, filtered


def prepare(out_dir, spec: SampleSpec, source=None, uids_file=None, n: int | None = None,
            shuffle: bool = False, seed: int = 0, workers: int = 1, timeout: float = 300,
            quality=None, threshold: float | None = None, progress: bool = True) -> dict:
    """Import the chosen objects into ``out_dir`` (see module docstring); returns the manifest.
    ``quality``: a scorer of object files (``scaling.quality_filter.QualityFilter``: ``score(paths)``,
    ``threshold``, ``source``) whose low scorers stay out of index.json. Bad input (uids file,
    source folder, missing package, other settings in ``out_dir``) raises ObjaverseError before
    anything is written."""
    t0, out = time.time(), Path(out_dir)
    if (uids_file is None) == (n is None) or (n is not None and n < 1):
        raise ObjaverseError("give either `uids_file` or `n` (n >= 1)")
    wanted = read_uids(uids_file) if uids_file is not None else None
    settings = {"mode": "source" if source is not None else "online", "source": source and str(source),
                "uids_file": uids_file and str(uids_file), "n": n, "shuffle": shuffle, "seed": seed,
                "workers": workers, "timeout": timeout, "spec": spec.to_dict(),
                "filter": quality and str(quality.source), "threshold": threshold}
    if source is not None:
        files = source_files(source)
    else:
        try:
            import objaverse  # optional (pip install -e '.[full]'): only the online download needs it
        except ImportError:
            raise ObjaverseError(NOT_INSTALLED) from None
        files = None
    _check_settings(out, settings)
    qfilter = quality
    if qfilter is not None:
        settings["threshold"] = threshold = qfilter.threshold if threshold is None else threshold
    available = list(files) if files is not None else objaverse.load_uids() if wanted is None else []
    uids = choose(available, wanted, n, shuffle, seed)

    objects = out / "objects"
    for stale in objects.glob(".*.npz.*.tmp"):  # left by a killed run (normal exits remove theirs)
        stale.unlink()
    failures, fresh, skipped = [], {}, 0
    todo = []
    for uid in uids:
        if UNSAFE.search(uid) or uid.startswith("."):
            failures.append({"uid": uid, "source": None, "kind": "invalid uid",
                             "reason": f"{uid}: not a valid uid (letters, digits and ._+- only)"})
        elif is_finished(objects / f"{uid}.npz"):
            skipped += 1
        else:
            todo.append(uid)
    if files is not None:
        located = ((u, files.get(u), None if u in files else f"not found in {source}") for u in todo)
    else:
        located = _online_paths(todo, workers)

    def jobs():
        for uid, path, why in located:
            if why:
                failures.append({"uid": uid, "source": str(source) if files is not None else "objaverse",
                                 "reason": f"{uid}: {why}",
                                 "kind": why.split(" (")[0].replace(str(source), "SOURCE")})
            else:
                yield {"uid": uid, "path": str(path), "npz": str(objects / f"{uid}.npz"), "spec": spec.to_dict(),
                       "seed": object_seed(seed, uid), "timeout": timeout}

    interrupted = False
    try:
        for r in tqdm(run_jobs(jobs(), max(1, min(workers, len(todo)))), total=len(todo), desc="objaverse", unit="obj",
                      disable=not progress):
            if "entry" in r:
                fresh[r["uid"]] = r["entry"]
            else:
                failures.append(r)
    except KeyboardInterrupt:
        interrupted = True

    entries, filtered = _index_entries(out, fresh, qfilter, threshold)
    if entries or filtered:
        write_index(out, entries, generator="objaverse", spec=spec.to_dict(), seed=seed,
                    ray_backend=ray_backend(), occupancy=occupancy_method(), filter=settings["filter"],
                    threshold=threshold)
    kinds = {}
    for f in failures:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    manifest = {
        "format": MANIFEST, "settings": settings, "interrupted": interrupted,
        "counts": {"requested": len(uids), "done_now": len(fresh), "skipped_done": skipped,
                   "failed": len(failures), "not_reached": len(uids) - len(fresh) - skipped - len(failures),
                   "filtered": len(filtered), "total_ok": len(entries)},
        "failures": [{k: f[k] for k in ("uid", "source", "reason")} for f in failures],
        "failure_kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "filtered": filtered, "seconds": round(time.time() - t0, 2), "ray_backend": ray_backend(),
        "occupancy": occupancy_method(),
    }
    if failures or entries or filtered:
        atomic_write_bytes(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    if interrupted:
        raise KeyboardInterrupt
    return manifest
