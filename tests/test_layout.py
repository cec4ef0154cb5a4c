"""The house keeps its shape: imports run one way (docs/design.md §1), every stage has one home with
the same parts, presets are validated, and the command line prints its help without torch."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compress3d_lite.config import PRESET_NAMES, ConfigError

PACKAGE = Path(__file__).resolve().parents[1] / "compress3d_lite"

# a layer may import only what is listed for it (modules of the package root by name, packages by folder)
ALLOWED = {
    "config": set(), "samples": set(),
    "data": {"config"},
    "models": {"config", "diffusion", "checkpoint"},  # checkpoint: save_pretrained / from_pretrained (models/hub.py)
    "diffusion": {"config"},
    "checkpoint": set(),
    "mesh": {"config", "data"},
    "presets": {"config", "diffusion", "models"},
    "training": {"config", "checkpoint", "data"},
    "inference": {"config", "samples", "checkpoint", "data", "models", "diffusion", "mesh", "presets"},
    "stages": {"config", "samples", "checkpoint", "data", "models", "diffusion", "mesh", "presets", "training",
               "inference"},
    "pipeline": {"config", "samples", "checkpoint", "data", "models", "diffusion", "mesh", "presets", "inference"},
    "scaling": {"config", "samples", "checkpoint", "data", "models", "diffusion", "mesh", "presets", "training",
                "inference", "stages"},
    "evaluation": {"config", "samples", "checkpoint", "data", "models", "diffusion", "mesh", "presets", "training",
                   "inference", "stages", "pipeline"},
    "viz": {"config", "data", "mesh"},  # mesh: the explorer extracts the surface it shows
    "notebook": {"config", "viz"},  # the notebooks' first call: fast mode, device, seed, figures
}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_layers(source: str, here: tuple) -> set:
    """The package layers a module imports; ``here`` is its folder inside the package (relative
    imports are resolved against it)."""
    tree = ast.parse(source)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[:len(here) - (node.level - 1)]) if node.level > 1 else list(here)
            target = base + (node.module.split(".") if node.module else [])
            names = [target[0]] if target else [a.name for a in node.names]
            out.update(n for n in names if n)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("compress3d_lite."):
            out.add(node.module.split(".")[1])
    return out - {"__init__", "__version__"}  # the package's own __init__ (its version string) is no layer


def test_imports_run_one_way():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        if layer in ("cli", "__init__") or "data_samples" in path.parts:
            continue  # the command line sits on top of everything
        for used in _imported_layers(path.read_text(), path.relative_to(PACKAGE).parts[:-1]) - {layer}:
            if used not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(PACKAGE)} ({layer}) imports {used}")
    assert not bad, "imports against the direction of docs/design.md §1:\n" + "\n".join(bad)


def test_the_layering_check_sees_a_wrong_import():
    """The check above can fail: a model imported by a data module, or a stage by the training
    loop, is seen (relative and absolute imports, inside functions too)."""
    sampling = (PACKAGE / "data" / "sampling.py").read_text()
    assert _imported_layers(sampling, ("data",)) <= {"data", "config"}
    bad = sampling + "\ndef f():\n    from ..models.prior import DiffusionPrior\n"
    assert "models" in _imported_layers(bad, ("data",)) - ALLOWED["data"]
    assert "stages" in _imported_layers("from compress3d_lite.stages.vae import load_vae\n", ("training",))
    assert _imported_layers("from . import metrics\nfrom .report import clean\n", ("evaluation",)) == {"evaluation"}


def test_the_package_root_is_a_handful_of_modules_none_very_long():
    root = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert root == ["__init__", "checkpoint", "config", "diffusion", "mesh", "notebook", "pipeline", "presets",
                    "samples"]
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"modules over ~400 lines: {long}"


def test_help_imports_no_torch():
    code = ("import sys; from compress3d_lite.cli import build_parser; "
            "build_parser().format_help(); print(sorted(m for m in ('torch', 'trimesh', 'open_clip') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# one home per stage


STAGES = {  # stage -> (its preset table and function in presets.py, its training in stages/, its loader in inference/)
    "vae": ("VAE_PRESETS", "vae_preset", "train_vae", "load_vae"),
    "embed": ("EMBED_PRESETS", "embed_preset", "train_embed", "load_towers"),
    "prior": ("PRIOR_PRESETS", "prior_preset", "train_prior", "load_prior"),
    "unet": ("UNET_PRESETS", "unet_preset", "train_unet", "load_unet"),
}


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_has_the_same_parts_in_the_same_rooms(name):
    import importlib

    from compress3d_lite import presets

    table, preset, train, load = STAGES[name]
    training = importlib.import_module(f"compress3d_lite.stages.{name}")
    loading = importlib.import_module(f"compress3d_lite.inference.{name}")
    assert tuple(getattr(presets, table)) == PRESET_NAMES
    for module, attr in ((training, train), (training, "dry_run_setup"), (loading, load), (presets, preset)):
        assert callable(getattr(module, attr, None)), f"{module.__name__} has no {attr}"
    p = getattr(presets, preset)("lite")
    assert p is not getattr(presets, table)["lite"] and p == getattr(presets, table)["lite"]  # a copy, safe to edit
    assert type(p).from_dict(p.to_dict()) == p  # the one to/from-dict helper round-trips


def test_preset_overrides_are_validated():
    from compress3d_lite.presets import prior_preset, unet_preset, vae_preset

    p = vae_preset("lite", model={"attn_res": 16}, train={"steps": 7, "lr": 1})
    assert p.model.attn_res == 16 and p.train.steps == 7 and p.train.lr == 1.0 and isinstance(p.train.lr, float)
    assert vae_preset("lite").model.attn_res == 8  # the table itself is untouched
    with pytest.raises(ConfigError, match="unknown AEConfig field 'attn_resolution'"):
        vae_preset("lite", model={"attn_resolution": 16})
    with pytest.raises(ConfigError, match="TrainConfig.steps: expected int, got '10'"):
        prior_preset("lite", train={"steps": "10"})
    with pytest.raises(ConfigError, match="UNetConfig.grad_checkpoint: expected bool"):
        unet_preset("lite", model={"grad_checkpoint": 1})
    with pytest.raises(ConfigError, match="unknown diffusion preset 'huge'; choose from lite, course"):
        unet_preset("huge")
    assert unet_preset("course").diffusion.prediction_type == "v_prediction"  # in the preset, not the code
    assert prior_preset("course").diffusion.prediction_type == "sample"


def test_a_bad_override_from_the_command_line_is_one_line(capsys):
    from compress3d_lite.cli import main

    with pytest.raises(SystemExit) as e:  # argparse refuses an unknown preset before anything runs
        main(["train", "ae", "--preset", "huge", "--dry-run"])
    assert e.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
    assert main(["train", "embed", "--preset", "lite", "--image-tower", "resnet", "--dry-run"]) == 2
    assert "unknown image tower 'resnet'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# one test-set builder


def test_held_out_objects_are_one_recipe_with_a_stream_per_evaluator():
    from compress3d_lite.evaluation.test_set import SPLITS, held_out, input_view, surface_points

    a, b = held_out("test", 3, "generate"), held_out("test", 3, "paper")
    assert [x.category for x in a] == [x.category for x in b]  # the same objects ...
    assert a[0].rng.random() != b[0].rng.random()  # ... each evaluator with its own draws
    c, d = held_out("test", 2, "embed"), held_out("test", 2, "embed")
    assert np.array_equal(surface_points(c[1], 64)[0], surface_points(d[1], 64)[0])  # deterministic
    rgba, cam = input_view(c[0], 32)
    assert rgba.shape == (32, 32, 4) and cam.shape == (1, 4, 4) and rgba[..., 3].max() == 255
    assert set(SPLITS) == {"train", "val", "test"}
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        held_out("dev", 3, "vae")
    with pytest.raises(ValueError, match="`n` must be >= 2"):
        held_out("test", 1, "embed", min_n=2)


# ---------------------------------------------------------------------------------------------
# one home for each shared fact: config.py, read from there by every module that needs it

SHARED_FACTS = ("PAPER_GUIDANCE", "AMBIENT", "SAMPLERS", "OBJECTIVES", "TIMESTEPS", "STARTS", "HALF_EXTENT",
                "PRESET_NAMES", "GPU_PRESETS", "STAGE_NAMES", "PRECISIONS", "TrainConfig")


def _defined_at_top(source: str) -> set:
    """Names a module assigns or defines (a class, a function) at its top level."""
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
    return names


def _literal_copies(source: str, values: dict) -> list:
    """The shared facts (name -> tuple of strings) a module spells out again as a literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 \
                and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            words = {e.value for e in node.elts}
            found += [name for name, value in values.items() if words == set(value)]
    return found


def test_no_module_spells_out_a_shared_list_of_names_again():
    """The sampler names the command line offers come from config.SAMPLERS, the stage names from
    STAGE_NAMES, ...: a literal copy of one of them anywhere else in the package fails here."""
    import compress3d_lite.config as config

    values = {name: getattr(config, name) for name in SHARED_FACTS
              if isinstance(getattr(config, name), tuple) and all(isinstance(v, str) for v in getattr(config, name))}
    copies = {str(p.relative_to(PACKAGE)): c for p in PACKAGE.rglob("*.py") if p.name != "config.py"
              and (c := _literal_copies(p.read_text(), values))}
    assert not copies, copies
    assert _literal_copies('choices=["euler", "ddim", "dpm", "ddpm"]', values) == ["SAMPLERS"]


def test_each_shared_fact_is_defined_in_config_only():
    homes = {name: [] for name in SHARED_FACTS}
    for path in PACKAGE.rglob("*.py"):
        for name in _defined_at_top(path.read_text()) & set(SHARED_FACTS):
            homes[name].append(str(path.relative_to(PACKAGE)))
    assert homes == {name: ["config.py"] for name in SHARED_FACTS}


def test_the_gpu_presets_are_the_ones_with_gpus():
    from compress3d_lite.config import GPU_PRESETS, STAGE_NAMES
    from compress3d_lite.presets import GPUS

    assert tuple(GPUS) == GPU_PRESETS  # config names them for the command line, presets.py says which GPU
    assert all(set(counts) == set(STAGE_NAMES) for _, counts in GPUS.values())


def test_the_one_home_check_sees_a_second_copy():
    assert "AMBIENT" in _defined_at_top("AMBIENT = 0.35  # must match data/render.py\n")
    assert "PAPER_GUIDANCE" in _defined_at_top("PAPER_GUIDANCE: dict = {'image': 5.0}\n")
    assert not _defined_at_top("from ..config import AMBIENT\n")
    assert "TrainConfig" in _defined_at_top("@dataclass\nclass TrainConfig(Config):\n    steps: int = 3\n")


def test_the_unet_samples_with_the_papers_guidance_unless_told():
    import inspect

    from compress3d_lite.config import PAPER_GUIDANCE
    from compress3d_lite.models.triplane_unet import TriplaneUNet

    guided = inspect.signature(TriplaneUNet.guided).parameters
    sample = inspect.signature(TriplaneUNet.sample).parameters
    assert (guided["guidance_image"].default, guided["guidance_shape"].default) == sample["guidance"].default \
        == (PAPER_GUIDANCE["image"], PAPER_GUIDANCE["shape"])
    assert list(guided["interval"].default) == list(sample["interval"].default) == PAPER_GUIDANCE["interval"]


# ---------------------------------------------------------------------------------------------
# inference apart from training; imports at the top; no circle; the library speaks Python


def test_the_pipeline_pulls_in_no_training_code():
    code = ("import sys, compress3d_lite.pipeline; print(sorted(m for m in sys.modules if m.startswith("
            "('compress3d_lite.training', 'compress3d_lite.stages', 'compress3d_lite.scaling', 'accelerate'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def _inner_package_imports(source: str) -> list:
    """Line numbers of imports of the package's own modules inside a function."""
    lines = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines += [node.lineno for node in ast.walk(fn) if isinstance(node, ast.ImportFrom)
                      and (node.level or (node.module or "").startswith("compress3d_lite"))]
    return lines


def test_the_package_imports_its_own_modules_at_the_top():
    """docs/design.md §7: the package's own imports stand at the top of each module (the command
    line imports each command's code when it runs: its deliberate laziness keeps --help fast)."""
    inner = {str(p.relative_to(PACKAGE)): lines for p in PACKAGE.rglob("*.py") if "cli" not in p.parts
             and (lines := _inner_package_imports(p.read_text()))}
    assert not inner, f"imports of the package inside functions: {inner}"


def test_the_inner_import_check_sees_one():
    assert _inner_package_imports("def f():\n    from ..mesh import extract_mesh\n") == [2]
    assert _inner_package_imports("from ..mesh import extract_mesh\ndef f():\n    import json\n") == []


def _module_graph() -> dict:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here[:len(here) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                if target.startswith("compress3d_lite"):
                    edges |= {target} | {f"{target}.{a.name}" for a in node.names}
        graph[name] = edges
    return {k: {m for m in v if m in graph and m != k} for k, v in graph.items()}


def _circles(graph: dict) -> list:
    """Groups of modules that import each other, directly or around a loop (a package's __init__
    importing its own modules aside)."""
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for m in graph.get(todo.pop(), ()):
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return seen
    closure = {m: reach(m) for m in graph}
    groups = {frozenset([m] + [o for o in closure[m] if m in closure[o]]) for m in graph if m in closure[m]}
    return sorted(sorted(g) for g in groups
                  if not all(x == min(g) or x.startswith(min(g) + ".") for x in g))


def test_no_two_modules_import_each_other():
    assert _circles(_module_graph()) == []


def test_the_circle_check_sees_one():
    assert _circles({"a.x": {"a.y"}, "a.y": {"a.x"}, "a.z": set()}) == [["a.x", "a.y"]]
    assert _circles({"a": {"a.x"}, "a.x": {"a"}}) == []  # a package's __init__ and its module


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")
TITLE_OF_A_COMMANDS_REPORT = {"scaling/dry_run.py"}  # the dry run's report is headed by the command it sizes


def _library_words(source: str) -> tuple:
    """(print() calls, strings naming a --flag) of a module, docstrings aside."""
    tree = ast.parse(source)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
    flags = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
             and id(n) not in docstrings and FLAG.search(n.value)]
    return prints, flags


def test_the_library_logs_and_names_arguments_not_flags():
    """Library code logs or returns instead of printing, and its messages name Python arguments
    (in backticks: `overwrite=True`); the command line turns those into its flags (cli.common.in_flag_terms)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(PACKAGE))
        if rel.startswith("cli/") or rel == "notebook.py":  # the two that talk to a person: they print
            continue
        prints, flags = _library_words(path.read_text())
        if rel in TITLE_OF_A_COMMANDS_REPORT:
            flags = []
        if prints or flags:
            found[rel] = {"print": prints, "flags": flags}
    assert not found, found


def test_the_library_words_check_sees_a_print_and_a_flag():
    prints, flags = _library_words('"""Run with --overwrite."""\ndef f():\n    print("hi")\n    raise ValueError("pass --overwrite")\n')
    assert prints == [3] and flags == [4]


def test_the_command_line_shows_a_library_argument_as_its_flag():
    from compress3d_lite.cli import build_parser
    from compress3d_lite.cli.common import in_flag_terms, option_names

    options = option_names(build_parser())
    said = in_flag_terms("x: exists; pass `overwrite=True`, `seed=3` differs, `use_prior=False`, `train diffusion`, "
                         "`latent_stats`, `num_inference_steps`", options)
    assert said == ("x: exists; pass --overwrite, --seed 3 differs, --no-prior, `train diffusion`, `latent_stats`, "
                    "--steps")
