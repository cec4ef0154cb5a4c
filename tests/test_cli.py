"""The command line: the toy dataset command, exit codes and one-line errors."""

import json
import re
import subprocess
import sys

import pytest

from compress3d_lite.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "compress3d_lite.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_toyshapes_command_writes_a_readable_dataset(tmp_path):
    out = tmp_path / "toy"
    r = run_cli("data", "toyshapes", "--n", "3", "--out", str(out), "--views", "2", "--res", "32",
                "--points", "256", "--occ", "512", "--seed", "1", "--workers", "1", "--png")
    assert r.returncode == 0, r.stderr
    assert "wrote 3 objects" in r.stdout and "ray caster" in r.stdout
    index = json.loads((out / "index.json").read_text())
    assert [e["file"] for e in index["objects"]] == ["000000.npz", "000001.npz", "000002.npz"]
    assert len(list((out / "images").glob("*.png"))) == 6
    r = run_cli("data", "view", str(out / "000001.npz"), "-o", str(tmp_path / "v.html"))
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "v.html").read_text()
    assert html.count("plotly-graph-div") >= 2 and "depth 1" in html


@pytest.mark.parametrize("args, message", [
    (["data", "toyshapes", "--n", "0", "--out", "x"], "--n must be >= 1"),
    (["data", "toyshapes", "--n", "2", "--out", "x", "--views", "-1"], "--views must be >= 0"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x").exists()


def test_view_of_a_broken_file_exits_2_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.npz"
    bad.write_text("not an npz")
    assert main(["data", "view", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and "not a readable .npz" in err and "\n" not in err
    assert main(["data", "view", str(tmp_path / "missing.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.npz"]


def test_import_batch_keeps_good_files_lists_failures_and_exits_2(tmp_path):
    from compress3d_lite.data.sample_meshes import write_sample_meshes

    meshes = tmp_path / "meshes"
    write_sample_meshes(meshes)
    bad_obj = tmp_path / "notes.obj"
    bad_obj.write_text("this is not a mesh\n")
    empty = tmp_path / "empty.glb"
    empty.write_bytes(b"")
    out = tmp_path / "out"
    r = run_cli("data", "import", str(meshes / "toy_lamp.glb"), str(bad_obj), str(empty),
                str(tmp_path / "missing.ply"), str(meshes / "crate.obj"), "--out", str(out),
                "--views", "1", "--res", "32", "--points", "256", "--occ", "512")
    assert r.returncode == 2
    assert "imported 2 object(s)" in r.stdout
    errors = [line for line in r.stderr.splitlines() if line.strip().startswith("error:")]
    assert len(errors) == 3
    for path in (bad_obj, empty, tmp_path / "missing.ply"):
        assert sum(str(path) in line for line in errors) == 1
    assert sorted(p.name for p in out.iterdir()) == ["crate.npz", "index.json", "toy_lamp.npz"]


# ---------------------------------------------------------------------------------------------
# first contact: help, version, help text everywhere, offline HTML


def test_a_bare_command_prints_the_help_and_exits_0():
    r = run_cli()
    assert r.returncode == 0 and r.stderr == ""
    assert "usage: compress3d-lite" in r.stdout and "generate" in r.stdout and "the main job" in r.stdout
    r = run_cli("train")  # a bare group prints its own help
    assert r.returncode == 0 and "usage: compress3d-lite train" in r.stdout and "diffusion" in r.stdout


def test_version():
    import compress3d_lite

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"compress3d-lite {compress3d_lite.__version__}"


def _actions(parser, path):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield " ".join(path), name, helps.get(name)
                yield from _actions(sub, path + [name])
        elif not isinstance(action, argparse._HelpAction):
            yield " ".join(path), "/".join(action.option_strings) or action.dest, action.help


def test_every_command_and_option_has_help_text_and_one_main_job():
    from compress3d_lite.cli import build_parser

    items = list(_actions(build_parser(), ["compress3d-lite"]))
    assert len(items) > 150
    missing = [f"{where}: {what}" for where, what, text in items if not text]
    assert not missing, "no help text: " + ", ".join(missing)
    main_job = [f"{where} {what}" for where, what, text in items if "main job" in text]
    assert main_job == ["compress3d-lite generate"]


def test_demo_writes_an_html_page_that_works_offline(tmp_path):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--n", "1"]) == 0
    html = (tmp_path / "demo" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=\"https?://", html)  # nothing fetched from the network
    assert len(html) > 3_000_000 and "Plotly.newPlot" in html  # plotly.js embedded, figures drawn
