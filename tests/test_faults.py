"""Faults: training killed at any moment (also inside the checkpoint write) resumes to the same
losses and weights as a run that was never stopped; an interrupted data set is never read as
finished and the same command finishes it (docs/design.md §6, §6.2)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import compress3d_lite.checkpoint as checkpoint
from compress3d_lite.checkpoint import read_weights
from compress3d_lite.config import SampleSpec
from compress3d_lite.data.io import DataFormatError, OutputError, read_index
from compress3d_lite.data.toyshapes import write_toyshapes
from compress3d_lite.samples import sample_path
from compress3d_lite.stages.vae import train_vae

OVER = {"steps": 12, "log_every": 1, "ckpt_every": 2, "batch_size": 2}
SPEC = SampleSpec(n_points=512, n_uniform=512, n_near=512, views=0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    write_toyshapes(4, folder, SPEC, seed=0, workers=1, progress=False)
    return folder


@pytest.fixture(scope="module")
def straight(tmp_path_factory, toy):
    """The run that is never stopped: its log and final weights are the reference."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train_vae("lite", run, data=str(toy), train_overrides=OVER, progress=False)
    return run


def _losses(run):
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


def _same_as_straight(run, straight):
    assert _losses(run) == _losses(straight)  # every step once, in order, bit-identical losses
    a, b = read_weights(run / "model"), read_weights(straight / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(run.glob(".checkpoint.*"))  # no temporary or set-aside folder left


class Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs, no cleanup of ours."""


@pytest.mark.parametrize("moment", ["files_written", "between_renames", "after_renames"])
def test_a_kill_inside_the_checkpoint_write_resumes_exactly(tmp_path, toy, straight, monkeypatch, moment):
    """The kill comes in the second checkpoint write (step 4): after its files are written, between
    the rename of the old checkpoint aside and of the new one into place, or after both."""
    run = tmp_path / "run"
    calls = {"writes": 0, "dead": False}
    real_replace, real_rmtree = os.replace, checkpoint.shutil.rmtree

    def die():
        calls["dead"] = True  # from here on nothing of ours runs, as after a SIGKILL
        raise Killed

    def replace(src, dst):
        if Path(dst).name == "checkpoint" and calls["writes"] == 2 and moment == "between_renames":
            die()  # the old checkpoint is at .checkpoint.old, the new one not yet in place
        return real_replace(src, dst)

    def rmtree(path, *a, **k):
        if calls["dead"]:
            return None  # a killed process cleans nothing up
        if Path(path).name == ".checkpoint.old" and calls["writes"] == 2 and moment == "after_renames":
            die()
        return real_rmtree(path, *a, **k)

    real_write_files = checkpoint.write_files

    def write_files(folder, *a, **k):
        real_write_files(folder, *a, **k)
        if Path(folder).name.startswith(".checkpoint.") and "trainer" not in str(folder):
            calls["writes"] += 1
            if calls["writes"] == 2 and moment == "files_written":
                die()  # a temporary folder that was never finished nor renamed

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    monkeypatch.setattr(checkpoint, "write_files", write_files)
    with pytest.raises(Killed):
        train_vae("lite", run, data=str(toy), train_overrides=OVER, progress=False)
    monkeypatch.undo()
    if moment == "between_renames":
        assert not (run / "checkpoint").exists() and (run / ".checkpoint.old").exists()
    train_vae("lite", run, data=str(toy), resume=True, train_overrides=OVER, progress=False)
    _same_as_straight(run, straight)


RUN = """
import sys
from compress3d_lite.stages.vae import train_vae
train_vae("lite", sys.argv[1], data=sys.argv[2], resume=sys.argv[3] == "resume",
          train_overrides={OVER}, progress=False)
""".replace("{OVER}", repr(OVER))


def test_sigkill_at_random_moments_then_resume_gives_the_same_run(tmp_path, toy):
    """A real ``kill -9`` at seeded random moments (some land inside a checkpoint write), each time
    followed by --resume (or a fresh start when no checkpoint exists yet), until the run ends."""
    run, rng = tmp_path / "run", random.Random(0)
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = {**os.environ, "C3D_FAST": "1", "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"  # the same process setup, never killed
    subprocess.run([sys.executable, str(script), str(reference), str(toy), "new"], env=env, check=True,
                   capture_output=True, timeout=300)
    kills, finished = 0, False
    for attempt in range(12):
        resume = (run / "checkpoint").exists() or (run / ".checkpoint.old").exists()
        if not resume and run.exists():
            for p in run.glob("log.jsonl"):
                p.unlink()  # killed before the first checkpoint: start over
        proc = subprocess.Popen([sys.executable, str(script), str(run), str(toy), "resume" if resume else "new"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if attempt < 4:  # four kills, then let it finish
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:  # wait for the training steps to start
                if (run / "log.jsonl").exists() and (run / "log.jsonl").read_text().strip():
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        out, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
        finished = (run / "model").exists()  # also when the kill came after the release was written
        if finished:
            break
    assert finished and kills >= 1
    _same_as_straight(run, reference)


# ----------------------------------------------------------------------------------------------
# data sets


class Interrupted(BaseException):
    pass


def test_an_interrupted_toyshapes_run_is_not_read_and_the_same_command_finishes_it(tmp_path, monkeypatch):
    import compress3d_lite.data.toyshapes as toyshapes

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    write_toyshapes(5, whole, SPEC, seed=3, workers=1, progress=False)
    real, done = toyshapes._write_one, []

    def dies_after_two(job):
        if len(done) == 2:
            raise Interrupted
        done.append(job)
        return real(job)

    monkeypatch.setattr(toyshapes, "_write_one", dies_after_two)
    with pytest.raises(Interrupted):
        write_toyshapes(5, cut, SPEC, seed=3, workers=1, progress=False)
    monkeypatch.undo()
    with pytest.raises(DataFormatError, match="unfinished"):
        read_index(cut)  # training (ObjectDataset, prepare_data) reads through read_index
    with pytest.raises(OutputError, match="seed 3, now 4"):
        write_toyshapes(5, cut, SPEC, seed=4, workers=1, progress=False)  # other settings: refused, not mixed
    write_toyshapes(5, cut, SPEC, seed=3, workers=1, progress=False)
    assert read_index(cut)["objects"] == read_index(whole)["objects"]
    for f in sorted(whole.glob("*.npz")):
        assert (cut / f.name).read_bytes() == f.read_bytes()
    assert sorted(p.name for p in cut.glob("*.npz")) == sorted(p.name for p in whole.glob("*.npz"))


def test_toyshapes_adds_objects_to_its_own_folder_and_index_lists_them_all(tmp_path):
    write_toyshapes(2, tmp_path, SPEC, seed=1, workers=1, progress=False)
    write_toyshapes(2, tmp_path, SPEC, seed=1, workers=1, progress=False, start=2)
    index = read_index(tmp_path)
    assert [e["file"] for e in index["objects"]] == [f"{i:06d}.npz" for i in range(4)] and index["complete"]


def test_an_interrupted_import_is_finished_by_the_same_command_and_a_second_import_adds(tmp_path, monkeypatch):
    import compress3d_lite.data.mesh_import as mesh_import

    meshes = sample_path("meshes")
    first = [meshes / "toy_lamp.glb", meshes / "vertex_color_snowman.ply"]
    import compress3d_lite.data.io as io

    real, calls = io.save_object, []

    def dies_on_the_second(path, example):
        if calls:
            raise Interrupted
        calls.append(path)
        return real(path, example)

    monkeypatch.setattr("compress3d_lite.data.io.save_object", dies_on_the_second)
    with pytest.raises(Interrupted):
        mesh_import.import_files(first, tmp_path, SPEC, progress=False)
    monkeypatch.undo()
    with pytest.raises(DataFormatError, match="unfinished"):
        read_index(tmp_path)
    entries, failures = mesh_import.import_files(first, tmp_path, SPEC, progress=False)
    assert not failures and len(entries) == 2
    mesh_import.import_files([meshes / "crate.obj"], tmp_path, SPEC, progress=False)  # a second batch adds
    index = read_index(tmp_path)
    files = sorted(e["file"] for e in index["objects"])
    assert files == sorted(p.name for p in tmp_path.glob("*.npz")) == ["crate.npz", "toy_lamp.npz",
                                                                       "vertex_color_snowman.npz"]
    with pytest.raises(OutputError, match="other settings"):
        mesh_import.import_files([meshes / "crate.obj"], tmp_path, SampleSpec(n_points=256, views=0), progress=False)
    assert np.load(tmp_path / "crate.npz")["points"].shape[0] == SPEC.n_points  # untouched by the refusal


# ----------------------------------------------------------------------------------------------
# SIGTERM, a full disk: each folder complete or resumable, and the message says which


CLI = [sys.executable, "-m", "compress3d_lite.cli"]
FAST_ENV = {**os.environ, "C3D_FAST": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _term_when(proc, ready, timeout=120):
    """SIGTERM ``proc`` once ``ready()`` holds (or it ended); its stderr."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=120)[1]


def test_sigterm_while_train_makes_its_toy_data_then_the_same_command_finishes(tmp_path):
    argv = CLI + ["train", "ae", "--preset", "lite", "--out", str(tmp_path / "run"), "--steps", "2",
                  "--batch-size", "2", "--n-train", "24"]
    proc = subprocess.Popen(argv, env=FAST_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = _term_when(proc, lambda: len(list((tmp_path / "run" / "data").glob("*.npz"))) >= 2)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted before the first checkpoint: run the same command")
    done = subprocess.run(argv, env=FAST_ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(read_index(tmp_path / "run" / "data")["objects"]) == 24 and (tmp_path / "run" / "model").is_dir()


def test_sigterm_during_toyshapes_with_workers_ends_the_workers_and_the_same_command_finishes(tmp_path):
    out = tmp_path / "ds"
    argv = CLI + ["data", "toyshapes", "--n", "40", "--out", str(out), "--views", "2", "--res", "64",
                  "--points", "512", "--occ", "512", "--workers", "2"]
    proc = subprocess.Popen(argv, env=FAST_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = _term_when(proc, lambda: len(list(out.glob("*.npz"))) >= 2)
    assert proc.returncode == 130 and "run the same command again to finish it" in err, err[-2000:]
    time.sleep(0.5)
    before = sorted(p.name for p in out.glob("*.npz"))
    time.sleep(2)
    assert sorted(p.name for p in out.glob("*.npz")) == before  # no worker writes after its parent ended
    assert subprocess.run(argv, env=FAST_ENV, capture_output=True, timeout=600).returncode == 0
    assert len(read_index(out)["objects"]) == 40


def test_a_full_disk_at_a_checkpoint_names_it_and_says_what_to_run(tmp_path, toy, monkeypatch):
    import errno

    import compress3d_lite.training.run_folder as run_folder
    from compress3d_lite.training.run_folder import TrainingError

    real, calls = run_folder.write_checkpoint, []

    def fills_the_disk(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(run_folder, "write_checkpoint", fills_the_disk)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"checkpoint of step 4 could not be written \(No space left on device\);"
                                            r" the last complete checkpoint \(step 2\) is kept: .* `resume=True`"):
        train_vae("lite", run, data=str(toy), train_overrides=OVER, progress=False)
    monkeypatch.undo()
    train_vae("lite", run, data=str(toy), resume=True, train_overrides=OVER, progress=False)
    assert json.loads((run / "model" / "config.json").read_text())["step"] == OVER["steps"]


def test_a_full_disk_while_generate_writes_fails_that_mesh_named_and_goes_on(tmp_path, pipe, monkeypatch):
    import errno

    import compress3d_lite.mesh as meshing
    from compress3d_lite.cli.generate import generate_files

    real = meshing.save_mesh

    def full_for_a(mesh, path):
        if path.name.startswith("a."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(mesh, path)

    monkeypatch.setattr(meshing, "save_mesh", full_for_a)
    image = sample_path("toyshapes", "images", "000003_0.png")
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(image.read_bytes())
    said = []
    report = generate_files(pipe, [tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "out", num_inference_steps=2,
                            mesh_resolution=32, log=lambda *a, **k: said.append(" ".join(map(str, a))))
    assert report["n_failed"] == 1 and (tmp_path / "out" / "b.glb").exists()
    assert any(f"{tmp_path / 'out' / 'a.glb'}: could not be written (No space left on device)" in x for x in said)


def test_the_interrupt_message_says_what_to_run(tmp_path):
    from argparse import Namespace

    from compress3d_lite.cli import interrupted

    train = Namespace(command="train", out=str(tmp_path), dry_run=False)
    assert "run the same command to start over" in interrupted(train)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "config.json").write_text('{"step": 40}')
    assert "checkpoint at step 40; run the same command with --resume" in interrupted(train)
    data = Namespace(command="data", data_command="toyshapes", out="ds")
    assert "run the same command again to finish it" in interrupted(data)
    assert "--overwrite" in interrupted(Namespace(command="generate", output="o"))
