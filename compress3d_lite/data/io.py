"""The on-disk format: one ``.npz`` per object, written atomically and byte-for-byte reproducibly.

Keys (docs/data.md, "On-disk format", has the full table):

    points       (N, 3)       float32  surface samples, data frame ([-0.9, 0.9]^3 box)
    colors       (N, 3)       float32  rgb in [0, 1] of each surface sample
    point_parts  (N,)         int16    part (toy) or scene geometry (import) of each sample
    occ_points   (M, 3)       float32  occupancy queries in [-1, 1]^3
    occ_labels   (M,)         bool     inside / outside
    transform    (4, 4)       float64  original frame -> data frame
    part_names   (P,)         str      names of the parts / scene geometries
    images       (V, H, W, 4) uint8    rendered RGBA views (alpha = mask)      [when rendered]
    depths       (V, H, W)    float32  camera-z depth, 0 = background          [when rendered]
    cam2world    (V, 4, 4)    float64  OpenCV-convention camera poses          [when rendered]
    intrinsics   (V, 3, 3)    float64  pinhole K in pixels                     [when rendered]
    category     ()           str      toy category                            [toy objects]
    part_colors  (P, 3)       float32  colour of each toy part                 [toy objects]
    source       ()           str      file name the object was imported from  [imports]

``np.savez`` stamps each zip member with the current time, so two runs give different bytes;
``save_object`` writes the same arrays with fixed zip timestamps instead, to a temporary file
that is renamed into place only when complete (no half-written object is ever visible).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import signal
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "compress3d_lite/object-v1"
REQUIRED = {
    "points": (np.float32, 2), "colors": (np.float32, 2), "occ_points": (np.float32, 2),
    "occ_labels": (np.bool_, 1), "transform": (np.float64, 2),
}
VIEW_KEYS = ("images", "depths", "cam2world", "intrinsics")


class DataFormatError(ValueError):
    """A file that is not a valid compress3d_lite object."""


class OutputError(ValueError):
    """An output that cannot be written, or that would replace earlier results without
    ``overwrite``; the message names the path and what to do (docs/design.md §6.2)."""


def prepare_output_folder(folder, create: bool = False) -> Path:
    """Check, before any long computation, that files can be written in ``folder``: no regular
    file on its path, and its nearest existing ancestor writable (a file is created there and
    removed at once). ``create``: make the folder now; otherwise a failed run leaves no trace."""
    folder = Path(folder)
    blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{folder}: {'exists and is not a folder' if blocker == folder else f'{blocker} is a file, not a folder'}")
    base = next(p for p in [folder, *folder.parents] if p.exists())
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=base)
        os.close(fd)
        os.unlink(probe)
        if create:
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot write in {base} ({e.strerror or e})") from None
    return folder


def prepare_output_file(path, overwrite: bool = False, inputs=()) -> Path:
    """An output file: not a folder, never one of the files in ``inputs`` (even with
    ``overwrite``), not an existing file unless ``overwrite``, in a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, not an output file")
    if path.exists() and any(Path(p).exists() and os.path.samefile(p, path) for p in inputs):
        raise OutputError(f"{path}: is also this command's input; choose another output name")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; pass `overwrite=True` to replace it, or choose another name")
    prepare_output_folder(path.parent)
    return path


class output_lock:
    """``with output_lock(folder, "generate"):`` -- one writer per output folder (the lock file is
    ``folder/.generate.lock``; ``what`` names the holder in the message). A second one is an
    OutputError naming the process that holds the folder; a lock left by a killed process (its
    pid is gone) is taken over."""

    def __init__(self, folder, name: str, what: str | None = None):
        self.path = Path(folder) / f".{name}.lock"
        self.name = what or name  # how the message names the holder

    def __enter__(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    raise OutputError(f"{self.path.parent}: another {self.name} (pid {pid}) is writing here; wait "
                                      "for it or choose another output folder") from None
                self.path.unlink(missing_ok=True)  # left by a process that no longer runs
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise OutputError(f"{self.path}: could not take the lock")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        return False


@contextlib.contextmanager
def writing_into(folder, name: str, what: str | None = None):
    """``with writing_into(out, "train"):`` -- create ``out`` if needed, hold its ``output_lock``
    for the block, and remove the folder again if it was created here and is left empty (a
    command that failed before writing anything leaves no trace). Yields the folder."""
    folder = Path(folder)
    created = not folder.exists()
    prepare_output_folder(folder, create=True)
    try:
        with output_lock(folder, name, what):
            yield folder
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_with_parent(ignore_sigint: bool = False) -> None:
    """Pool initializer: the worker gets SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``),
    even by ``kill -9``, so no worker goes on writing into a folder nobody owns; elsewhere a
    no-op (the pool's own shutdown still ends the workers on a normal exit or an interrupt).
    ``ignore_sigint``: Ctrl-C is left to the parent, which lets the jobs in flight finish."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on the disk before the rename makes it visible
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# random float coordinates barely deflate (~7%) but cost most of the compression time: store them
INCOMPRESSIBLE = ("points", "occ_points")


def npz_bytes(arrays: dict, compress: bool = True) -> bytes:
    """The bytes of an ``.npz`` of ``arrays`` with fixed timestamps and sorted members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            deflate = compress and key not in INCOMPRESSIBLE
            info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=1 if deflate else None)
    return buf.getvalue()


def save_object(path, arrays: dict) -> None:
    validate_object(arrays, str(path))
    atomic_write_bytes(path, npz_bytes(arrays))


POINT_BOX = 1.05  # surface points lie in the [-0.9, 0.9]^3 data box, queries in [-1, 1]^3; a little slack
VIEW_SHAPES = {"images": (np.uint8, 4), "depths": (np.float32, 3), "cam2world": (np.float64, 3),
               "intrinsics": (np.float64, 3)}


def validate_object(arrays: dict, name: str = "object") -> None:
    """Raise DataFormatError naming ``name`` and the first problem found: a missing array, a
    wrong dtype or shape, no points, non-finite values, colours outside [0, 1], coordinates
    outside the data box, incomplete or malformed rendered views."""
    for key, (dtype, ndim) in REQUIRED.items():
        if key not in arrays:
            raise DataFormatError(f"{name}: missing array '{key}'")
        a = np.asarray(arrays[key])
        if a.dtype != dtype or a.ndim != ndim:
            raise DataFormatError(f"{name}: '{key}' should be {np.dtype(dtype).name} with {ndim} dims, "
                                  f"got {a.dtype.name} {a.shape}")
    n, m = len(arrays["points"]), len(arrays["occ_points"])
    if arrays["points"].shape != (n, 3) or arrays["colors"].shape != (n, 3):
        raise DataFormatError(f"{name}: points/colors must both be (N, 3)")
    if arrays["occ_points"].shape != (m, 3) or arrays["occ_labels"].shape != (m,):
        raise DataFormatError(f"{name}: occ_points (M, 3) and occ_labels (M,) disagree")
    if n == 0 or m == 0:
        raise DataFormatError(f"{name}: holds {n} surface points and {m} occupancy queries; an object needs at "
                              "least one of each")
    if not (np.isfinite(arrays["points"]).all() and np.isfinite(arrays["occ_points"]).all()):
        raise DataFormatError(f"{name}: non-finite coordinates")
    for key in ("points", "occ_points"):
        reach = float(np.abs(arrays[key]).max())
        if reach > POINT_BOX:
            raise DataFormatError(f"{name}: '{key}' reach {reach:.3g} from the centre; objects live in the "
                                  "[-1, 1]^3 data box (import meshes with `data import`, which normalises them)")
    colors = arrays["colors"]
    if not np.isfinite(colors).all():
        raise DataFormatError(f"{name}: 'colors' holds {int((~np.isfinite(colors)).sum())} non-finite values")
    if colors.min() < 0 or colors.max() > 1:
        raise DataFormatError(f"{name}: 'colors' span {colors.min():.3g}..{colors.max():.3g}; rgb must be in "
                              "[0, 1] (divide 0..255 colours by 255)")
    transform = np.asarray(arrays["transform"])
    if transform.shape != (4, 4) or not np.isfinite(transform).all():
        raise DataFormatError(f"{name}: 'transform' must be a finite (4, 4) matrix, got {transform.shape}")
    present = [k for k in VIEW_KEYS if k in arrays]
    if present and len(present) != len(VIEW_KEYS):
        raise DataFormatError(f"{name}: views need all of {VIEW_KEYS}, got {present}")
    if present:
        v = len(arrays["images"])
        want = {"images": (v, None, None, 4), "depths": (v, None, None), "cam2world": (v, 4, 4),
                "intrinsics": (v, 3, 3)}
        for key, (dtype, ndim) in VIEW_SHAPES.items():
            a = np.asarray(arrays[key])
            fits = a.ndim == ndim and all(w is None or w == s for w, s in zip(want[key], a.shape))
            if a.dtype != dtype or not fits:
                shape = ", ".join("?" if w is None else str(w) for w in want[key])
                raise DataFormatError(f"{name}: '{key}' should be {np.dtype(dtype).name} of shape ({shape}), "
                                      f"got {a.dtype.name} {a.shape}")
        if arrays["depths"].shape[1:] != arrays["images"].shape[1:3]:
            raise DataFormatError(f"{name}: 'depths' {arrays['depths'].shape} and 'images' "
                                  f"{arrays['images'].shape} disagree in size")


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def load_object(path) -> dict:
    """Read one object ``.npz`` into a dict of arrays (0-d string arrays become ``str``)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise DataFormatError(f"{path}: not a file (an object is one .npz file)")
    if path.is_file() and path.stat().st_size and _head(path, 2) != b"PK":
        raise DataFormatError(f"{path}: not a readable .npz (a .npz is a zip file; this one has no zip header)")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:  # our handle: closed on any failure
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such file") from None
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError ...
        raise DataFormatError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
    validate_object(arrays, str(path))
    for k in ("category", "source"):
        if k in arrays and arrays[k].ndim == 0:
            arrays[k] = str(arrays[k])
    return arrays


def write_index(out_dir, entries: list, **info) -> Path:
    """``index.json`` of a dataset folder: format tag, how it was made, one entry per object."""
    path = Path(out_dir) / "index.json"
    doc = {"format": FORMAT, **info, "objects": entries}
    atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())
    return path


def read_index(data_dir, allow_unfinished: bool = False) -> dict:
    """The ``index.json`` of a dataset folder, checked: a folder holding a regular file of UTF-8
    JSON, an object with our format tag and a list of entries, each naming a relative ``.npz``
    path inside the folder. A finished data set must hold objects, each of them a file that
    exists; an unfinished one (``complete: false``) is refused unless ``allow_unfinished``."""
    folder = Path(data_dir)
    path = folder / "index.json"
    if folder.exists() and not folder.is_dir():
        raise DataFormatError(f"{folder}: not a folder (a data set is a folder holding index.json)")
    if not path.exists():
        raise DataFormatError(f"{path}: missing; is {data_dir} a compress3d_lite dataset folder?")
    if not path.is_file():
        raise DataFormatError(f"{path}: not a regular file")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise DataFormatError(f"{path}: nested too deeply to be an index") from None
    if not isinstance(doc, dict):
        raise DataFormatError(f"{path}: a JSON {type(doc).__name__}, expected an object with \"format\" and "
                              "\"objects\"")
    if doc.get("format") != FORMAT:
        raise DataFormatError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    if doc.get("complete") is False and not allow_unfinished:
        raise DataFormatError(f"{path}: an unfinished data set (the command that writes it was interrupted); "
                              "run the same command again to finish it")
    entries = doc.get("objects", [])
    if not isinstance(entries, list):
        raise DataFormatError(f"{path}: \"objects\" is a {type(entries).__name__}, expected a list of entries")
    for k, entry in enumerate(entries):
        file = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file, str) or not file:
            raise DataFormatError(f"{path}: entry {k} has no \"file\" naming its .npz (got {entry!r:.60})")
        if Path(file).is_absolute() or ".." in Path(file).parts:
            raise DataFormatError(f"{path}: entry {k} names {file!r}, outside the data folder; entries are paths "
                                  "relative to the folder, without '..'")
    if not allow_unfinished:
        if not entries:
            raise DataFormatError(f"{path}: lists no objects")
        for k, entry in enumerate(entries):
            file = folder / entry["file"]
            if not file.is_file():
                raise DataFormatError(f"{path}: entry {k} names {entry['file']!r}, "
                                      f"{'not a file' if file.exists() else 'which does not exist'}")
    return doc


def _plain(value):
    """A value as it reads back from JSON (tuples become lists), so settings compare as stored."""
    return json.loads(json.dumps(value))


def open_dataset(out_dir, generator: str, settings: dict, **info) -> dict:
    """Claim ``out_dir`` for objects made by ``generator`` with ``settings`` (e.g. seed and sampling
    spec), the data set's manifest, kept in its ``index.json`` (docs/design.md §6.2):

    * a new or empty folder starts a data set, marked unfinished until ``close_dataset``;
    * a folder made by the same generator with the same settings is continued -- a rerun after an
      interruption, or more objects added -- and its entries are returned ({file: entry});
    * a folder made with other settings or by another command, or holding files but no index.json,
      is refused (OutputError naming each difference): a data set never mixes two recipes.

    While unfinished, ``read_index`` refuses the folder, so training never reads half a data set."""
    out = prepare_output_folder(out_dir, create=True)
    want = {"generator": generator, **_plain(settings)}
    if (out / "index.json").exists():
        doc = read_index(out, allow_unfinished=True)
        diffs = [f"{k} {doc.get(k)!r}, now {v!r}" for k, v in want.items() if doc.get(k) != v]
        if diffs:
            raise OutputError(f"{out}: a data set made with other settings ({'; '.join(diffs)}); one folder holds one "
                              "data set: choose another `out_dir`, or delete this one first")
        entries = {e["file"]: e for e in doc.get("objects", [])}
    else:
        others = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if others:
            raise OutputError(f"{out}: holds {len(others)} file(s) ({', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}) but no index.json; choose an empty or new "
                              "`out_dir`")
        entries = {}
    write_index(out, sorted(entries.values(), key=lambda e: e["file"]), complete=False, **want, **info)
    return entries


def close_dataset(out_dir, entries: dict, generator: str, settings: dict, **info) -> Path:
    """Write the finished ``index.json``: every entry (``{file: entry}``, earlier runs' included)."""
    return write_index(out_dir, sorted(entries.values(), key=lambda e: e["file"]), complete=True,
                       generator=generator, **_plain(settings), **info)
