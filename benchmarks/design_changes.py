"""The five changes docs/design.md's "To change X" table is checked against, made for real in a
throwaway worktree of HEAD: each change is applied, the package files it touched are counted, and
a command that exercises it is run. The layout promises at most three package files each.

    python benchmarks/design_changes.py            # all five; about a minute on 2 CPU cores

The edits are string replacements of today's code: when the code they edit moves, this script
fails loudly (an AssertionError naming the file), and it is updated together with the table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE = "data_samples/toyshapes/images/000003_0.png"


def edit(package: Path, rel: str, old: str, new: str) -> None:
    path = package / rel
    text = path.read_text()
    assert old in text, f"{rel}: the code this change edits has moved ({old[:60]!r})"
    path.write_text(text.replace(old, new, 1))


def attention(p: Path) -> list:
    """A new option of the 3D-aware attention: its learned key positions can be switched off."""
    edit(p, "models/attention3d.py", "attn_res: int, heads: int = 4):",
         "attn_res: int, heads: int = 4, positions: bool = True):")
    edit(p, "models/attention3d.py", "        self.latent_res, self.attn_res, self.heads = latent_res, attn_res, heads\n",
         "        self.latent_res, self.attn_res, self.heads = latent_res, attn_res, heads\n"
         "        self.positions = positions\n")
    edit(p, "models/attention3d.py", "volume_cubes(vol_d, k, r) + self.pos[k]",
         "volume_cubes(vol_d, k, r) + (self.pos[k] if self.positions else 0)")
    edit(p, "models/autoencoder.py", "    attn_heads: int = 4\n",
         "    attn_heads: int = 4\n    attn_positions: bool = True  # learned key positions in each cube\n")
    edit(p, "models/autoencoder.py", "cfg.attn_res, cfg.attn_heads)", "cfg.attn_res, cfg.attn_heads, cfg.attn_positions)")
    edit(p, "presets.py", "attn_res=8, attn_heads=2, head_hidden=32),",
         "attn_res=8, attn_heads=2, head_hidden=32, attn_positions=False),")
    return ["compress3d-lite", "train", "ae", "--preset", "lite", "--dry-run"]


def sampler(p: Path) -> list:
    """UniPC, a multistep predictor-corrector, for a DDPM UNet."""
    edit(p, "config.py", 'SAMPLERS = ("ddim", "dpm", "ddpm", "euler")', 'SAMPLERS = ("ddim", "dpm", "ddpm", "euler", "unipc")')
    edit(p, "diffusion.py", '    elif sampler == "dpm":\n',
         '    elif sampler == "unipc":\n'
         '        from diffusers import UniPCMultistepScheduler\n\n'
         '        chosen = UniPCMultistepScheduler.from_config(ddpm.config)\n'
         '    elif sampler == "dpm":\n')
    out = Path(tempfile.mkdtemp(prefix="c3d_unipc_"))
    return ["compress3d-lite", "generate", IMAGE, "-o", str(out / "o"), "--pipeline", "course_ddpm",
            "--sampler", "unipc", "--steps", "5", "--res", "32"]


def preset(p: Path) -> list:
    """An h100 preset: the a100_full sizes with twice the batch, on the same GPU counts."""
    edit(p, "config.py", 'PRESET_NAMES = ("lite", "course", "colab_t4", "a100_full")',
         'PRESET_NAMES = ("lite", "course", "colab_t4", "a100_full", "h100")')
    with open(p / "presets.py", "a") as f:
        f.write('\n\nfor _table in (VAE_PRESETS, EMBED_PRESETS, PRIOR_PRESETS, UNET_PRESETS):  # h100: a100_full, batch x2\n'
                '    _table["h100"] = _table["a100_full"].override(train={"batch_size": 2 * _table["a100_full"].train.batch_size})\n'
                'GPUS["h100"] = GPUS["a100_full"]\n')
    return ["compress3d-lite", "train", "prior", "--preset", "h100", "--dry-run"]


def metric(p: Path) -> list:
    """The generated shape's occupied volume against the truth's, per object and as a median."""
    edit(p, "evaluation/metrics.py", "def psnr(",
         'def volume_ratio(pred_occ, gt_occ) -> float:\n'
         '    """Occupied volume of the prediction over the truth\'s (1: the right amount of shape)."""\n'
         '    return float(np.asarray(pred_occ).mean() / max(np.asarray(gt_occ).mean(), 1e-9))\n\n\n'
         'def psnr(')
    edit(p, "evaluation/generate.py", 'r = {"iou": metrics.iou(logits > 0, case.inside),',
         'r = {"iou": metrics.iou(logits > 0, case.inside), "volume_ratio": metrics.volume_ratio(logits > 0, case.inside),')
    edit(p, "evaluation/generate.py", '    return {"iou_median": float(np.median(ious)),',
         '    return {"volume_ratio_median": float(np.median([r["volume_ratio"] for r in rows])),\n'
         '            "iou_median": float(np.median(ious)),')
    out = Path(tempfile.mkdtemp(prefix="c3d_metric_"))
    return ["compress3d-lite", "evaluate", "generate", "--n", "2", "--res", "32", "--json", str(out / "g.json")]


def command(p: Path) -> list:
    """``data stats FOLDER``: objects per category of a data folder."""
    edit(p, "cli/data.py", "def add_parsers(sub) -> None:",
         'def cmd_stats(args):\n'
         '    """Objects per category of a data folder (its index.json)."""\n'
         '    from collections import Counter\n\n'
         '    from ..data.io import read_index\n\n'
         '    counts = Counter(entry.get("category", "?") for entry in read_index(args.folder)["objects"])\n'
         '    for category, n in sorted(counts.items()):\n'
         '        print(f"{category:12s} {n}")\n'
         '    return 0\n\n\n'
         'def add_parsers(sub) -> None:')
    text = (p / "cli/data.py").read_text()
    anchor = text.index("\n", text.index('    data = group(sub, "data",')) + 1
    (p / "cli/data.py").write_text(text[:anchor] + '    st = data.add_parser("stats", help="objects per category")\n'
                                   '    st.add_argument("folder")\n    st.set_defaults(func=cmd_stats)\n' + text[anchor:])
    return ["compress3d-lite", "data", "stats", "data_samples/toyshapes"]


CHANGES = {"the 3D-aware attention": attention, "a new sampler": sampler, "a new preset": preset,
           "a new evaluation metric": metric, "a new command": command}


def main() -> int:
    worst = 0
    for name, change in CHANGES.items():
        tree = Path(tempfile.mkdtemp(prefix="c3d_change_")) / "tree"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), "HEAD"], cwd=REPO, check=True)
        try:
            check = change(tree / "compress3d_lite")
            touched = subprocess.run(["git", "diff", "--name-only", "--", "compress3d_lite"], cwd=tree,
                                     capture_output=True, text=True, check=True).stdout.split()
            env = {**os.environ, "PYTHONPATH": str(tree), "C3D_FAST": "1", "HF_HUB_OFFLINE": "1"}
            r = subprocess.run(check, cwd=tree, capture_output=True, text=True, env=env)
            worst = max(worst, len(touched))
            files = ", ".join(t.removeprefix("compress3d_lite/") for t in touched)
            print(f"{name:24s} {len(touched)} package files ({files}); `{' '.join(check[:5])} ...` exit {r.returncode}")
            if r.returncode:
                print(r.stdout[-1000:] + r.stderr[-2000:])
                return 1
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=True)
            shutil.rmtree(tree.parent, ignore_errors=True)
    print(f"at most {worst} package files per change")
    return 0 if worst <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
