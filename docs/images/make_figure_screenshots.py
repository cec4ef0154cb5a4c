"""Screenshots of the course's key interactive figures, as a student sees them in a browser.

    python docs/images/make_figure_screenshots.py            # ~30 s on 2 cores, needs chromium
    python docs/images/make_figure_screenshots.py --html-only  # the pages alone, no browser needed

Each figure is built by the same library calls the notebooks make, written as a standalone page
(plotly.js embedded, ``viz.save_html``) and screenshotted by headless Chromium
(``apt-get install chromium``). The PNGs land in ``docs/images/`` and the README shows them:

* ``explorer_vae.png``: ``viz.triplane_explorer`` on the VAE latent of a held-out lamp (notebook 02);
* ``explorer_generated.png``: the explorer on the latent the course pipeline generates from one 64 px
  view of that lamp (notebooks 06 and 07);
* ``denoising.png``: ``viz.denoising_figure``, the noisy latent, the estimate of the clean latent and
  its mesh at one DDIM step (notebook 06);
* ``mesh_shading.png``: the generated mesh flat-shaded (how meshes used to look), smooth-shaded (how
  ``viz`` draws them now) and the true object, one camera.

The HTML pages go to ``--out`` (default: a temporary folder) so the repository keeps only the PNGs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from compress3d_lite import viz
from compress3d_lite.config import SampleSpec
from compress3d_lite.data import make_toy_object, toy_example
from compress3d_lite.evaluation.embed import embedding_test_set
from compress3d_lite.mesh import extract_mesh
from compress3d_lite.pipeline import Compress3DPipeline

HERE = Path(__file__).resolve().parent
LAMP = 3  # test split (seed 1000), object 3: a lamp no stage was trained on


def browser() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def screenshot(html: Path, png: Path, width: int, height: int, exe: str) -> None:
    """Headless Chromium draws the page (WebGL included) and writes a PNG of the window."""
    subprocess.run([exe, "--headless=new", "--no-sandbox", "--hide-scrollbars", "--virtual-time-budget=8000",
                    f"--screenshot={png}", f"--window-size={width},{height}", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    print(f"wrote {png.relative_to(HERE.parents[1])}")


def figures(pipe) -> dict:
    """name -> (figure, window width, window height)."""
    vae = pipe.vae
    obj = make_toy_object(1000, LAMP)
    ex = toy_example(obj, SampleSpec(n_points=2048, n_uniform=64, n_near=64, views=0), np.random.default_rng(0))
    with torch.no_grad():
        mu, _ = vae.encode(torch.from_numpy(ex["points"])[None], torch.from_numpy(ex["colors"])[None])
    held_out = embedding_test_set("test", LAMP + 1, n_points=512, progress=False)
    picture = (held_out["rgba"][LAMP].permute(1, 2, 0).numpy() * 255).astype(np.uint8)

    steps = []
    result = pipe(picture, seed=0, mesh_resolution=96,
                  callback=lambda i, t, x_t, x0: steps.append((i, t, x_t.clone(), x0.clone())))
    show = [0, 1, 2, 4, 8, 16, 24]
    step_meshes = [pipe.decode(steps[k][3], 64)[0][0] for k in show]
    denoise = viz.denoising_figure([steps[k][2] for k in show], [steps[k][3] for k in show], step_meshes,
                                   [f"step {k + 1} (t={steps[k][1]})" for k in show], start=2,
                                   title="DDIM: the noisy latent, the estimate of the clean latent, its mesh")

    mesh = result.mesh
    with torch.no_grad():  # the coarse grid of the notebooks' fast mode, where facets show most
        coarse = extract_mesh(vae, vae.decode(result.latents), 48)
    mesh = mesh if mesh is not None else coarse
    shading = viz.compare_meshes([coarse, coarse, obj.colored_mesh()],
                                 ["flat shading (before), 48³ grid", "smooth shading (viz today), 48³ grid",
                                  "the true object"])
    shading.data[0].update(flatshading=True, lightposition=dict(x=1000, y=2000, z=3000),  # the old mesh_trace
                           lighting=dict(ambient=0.55, diffuse=0.6, specular=0.05, roughness=0.9, fresnel=0.0,
                                         vertexnormalsepsilon=1e-12, facenormalsepsilon=1e-6))  # plotly's defaults
    return {
        "explorer_vae": (viz.triplane_explorer(vae, latent=mu, title="a held-out lamp, encoded by the VAE and decoded"),
                         1100, 1000),
        "explorer_generated": (viz.triplane_explorer(vae, latent=result.latents, mesh=mesh,
                                                     title="the latent the pipeline generated from one view of it"),
                               1100, 1000),
        "denoising": (denoise, 1000, 580),
        "mesh_shading": (shading, 1000, 420),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for the HTML pages (default: a temporary one)")
    ap.add_argument("--html-only", action="store_true", help="write the pages, take no screenshots")
    args = ap.parse_args(argv)
    exe = browser()
    if exe is None and not args.html_only:
        print("error: no chromium found (apt-get install chromium), or pass --html-only", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    pipe = Compress3DPipeline.from_pretrained("course", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="c3d_figures_"))
    out.mkdir(parents=True, exist_ok=True)
    for name, (fig, width, height) in figures(pipe).items():
        html = viz.save_html(fig, out / f"{name}.html")
        if not args.html_only:
            screenshot(html, HERE / f"{name}.png", width, height, exe)
    print(f"pages in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
