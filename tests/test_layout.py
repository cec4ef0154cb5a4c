"""The house keeps its shape: imports run one way (docs/design.md §1), every stage has one home with
the same parts, presets are validated, and the command line prints its help without torch."""

import ast
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
    "training": {"config", "checkpoint", "data"},
    "stages": {"config", "samples", "checkpoint", "data", "models", "diffusion", "mesh", "training"},
    "evaluation": {"config", "samples", "checkpoint", "data", "models", "diffusion", "mesh", "training", "stages",
                   "pipeline"},
    "pipeline": {"config", "samples", "checkpoint", "data", "models", "diffusion", "mesh", "stages"},
    "viz": {"config", "data", "mesh"},  # mesh: the explorer extracts the surface it shows
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
    assert root == ["__init__", "checkpoint", "config", "diffusion", "mesh", "pipeline", "samples"]
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


STAGES = {
    "vae": ("vae_preset", "train_vae", "load_vae"),
    "embed": ("embed_preset", "train_embed", "load_towers"),
    "prior": ("prior_preset", "train_prior", "load_prior"),
    "unet": ("unet_preset", "train_unet", "load_unet"),
}


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_module_has_the_same_parts(name):
    import importlib

    module = importlib.import_module(f"compress3d_lite.stages.{name}")
    preset, train, load = STAGES[name]
    assert tuple(module.PRESETS) == PRESET_NAMES
    for attr in (preset, train, load, "dry_run_setup"):
        assert callable(getattr(module, attr)), f"stages/{name}.py has no {attr}"
    p = getattr(module, preset)("lite")
    assert p is not module.PRESETS["lite"] and p == module.PRESETS["lite"]  # a copy, safe to edit
    assert type(p).from_dict(p.to_dict()) == p  # the one to/from-dict helper round-trips


def test_preset_overrides_are_validated():
    from compress3d_lite.stages.prior import prior_preset
    from compress3d_lite.stages.unet import unet_preset
    from compress3d_lite.stages.vae import vae_preset

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
    with pytest.raises(ValueError, match="--n must be >= 2"):
        held_out("test", 1, "embed", min_n=2)


# ---------------------------------------------------------------------------------------------
# one home for each shared fact: config.py, read from there by every module that needs it

SHARED_FACTS = ("PAPER_GUIDANCE", "AMBIENT", "SAMPLERS", "OBJECTIVES", "TIMESTEPS", "STARTS", "HALF_EXTENT",
                "PRESET_NAMES")


def _defined_at_top(source: str) -> set:
    """Names a module assigns at its top level."""
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_each_shared_fact_is_defined_in_config_only():
    homes = {name: [] for name in SHARED_FACTS}
    for path in PACKAGE.rglob("*.py"):
        for name in _defined_at_top(path.read_text()) & set(SHARED_FACTS):
            homes[name].append(str(path.relative_to(PACKAGE)))
    assert homes == {name: ["config.py"] for name in SHARED_FACTS}


def test_the_one_home_check_sees_a_second_copy():
    assert "AMBIENT" in _defined_at_top("AMBIENT = 0.35  # must match data/render.py\n")
    assert "PAPER_GUIDANCE" in _defined_at_top("PAPER_GUIDANCE: dict = {'image': 5.0}\n")
    assert not _defined_at_top("from ..config import AMBIENT\n")


def test_the_unet_samples_with_the_papers_guidance_unless_told():
    import inspect

    from compress3d_lite.config import PAPER_GUIDANCE
    from compress3d_lite.models.triplane_unet import TriplaneUNet

    guided = inspect.signature(TriplaneUNet.guided).parameters
    sample = inspect.signature(TriplaneUNet.sample).parameters
    assert (guided["guidance_image"].default, guided["guidance_shape"].default) == sample["guidance"].default \
        == (PAPER_GUIDANCE["image"], PAPER_GUIDANCE["shape"])
    assert list(guided["interval"].default) == list(sample["interval"].default) == PAPER_GUIDANCE["interval"]
