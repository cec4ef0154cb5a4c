"""The README's picture: held-out toy objects, one 64 px view each in, the coloured mesh of the
shipped course pipeline (rectified flow) and of the DDPM UNet shipped before (``course_ddpm``, same
VAE, towers and prior), each rendered from two cameras, beside the true object.

    python docs/images/make_readme_figure.py          # writes docs/images/image_to_mesh.png (~1 min, 2 cores)

Inputs are objects of the test split (seed 1000), never seen in training; the view is rendered at a
random orbit camera, as in ``compress3d-lite evaluate generate``.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from compress3d_lite.config import SampleSpec
from compress3d_lite.data.images import load_image
from compress3d_lite.data.render import intrinsics, look_at, orbit_cameras, render_trimesh, render_views
from compress3d_lite.data.toyshapes import make_toy_object
from compress3d_lite.evaluation.test_set import SPLITS
from compress3d_lite.pipeline import Compress3DPipeline

OBJECTS = [3, 0, 5, 8]  # test-split indices: lamp, mug, rocket, dumbbell
TILE, INPUT_RES = 160, 64
OUT = Path(__file__).resolve().parent / "image_to_mesh.png"


def white(rgba: np.ndarray) -> Image.Image:
    """RGBA uint8 -> RGB on white, TILE px."""
    a = rgba[..., 3:4] / 255.0
    rgb = (rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)
    return Image.fromarray(rgb).resize((TILE, TILE), Image.LANCZOS)


def main():
    pipes = {name: Compress3DPipeline.from_pretrained(name, device="cpu") for name in ("course_ddpm", "course")}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    spec = SampleSpec()
    cams = np.stack([look_at(4.6 * np.array([np.cos(np.radians(20)) * np.sin(a), np.sin(np.radians(20)),
                                               np.cos(np.radians(20)) * np.cos(a)]))
                     for a in np.radians([30, 210])])
    rows = []
    for i in OBJECTS:
        obj = make_toy_object(SPLITS["test"], i)
        rng = np.random.default_rng([SPLITS["test"], i, 5])
        cam = orbit_cameras(1, rng, spec.radius, spec.elevation_deg)
        view, _ = render_views(obj.colored_mesh(), cam, intrinsics(INPUT_RES, spec.fov_deg), INPUT_RES)
        row = [white(view[0])]
        for name, pipe in pipes.items():
            out = pipe(load_image(view[0]), seed=0)  # each checkpoint's sampler, steps and guidance
            row += [white(g) for g in render_trimesh(out.mesh, cams, 192)]
            print(f"{obj.category} ({name}): {len(out.mesh.faces)} faces, {out.timings['total']:.2f} s")
        truth, _ = render_views(obj.colored_mesh(), cams[:1], intrinsics(192, spec.fov_deg), 192)
        rows.append(row + [white(truth[0])])
    gap, head = 8, 28
    titles = ["input (64 px)", "before (DDPM), view 1", "view 2", "now (rectified flow), view 1", "view 2",
              "true object, view 1"]
    sheet = Image.new("RGB", (len(titles) * TILE + (len(titles) + 1) * gap, len(rows) * (TILE + gap) + gap + head),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(titles):
        draw.text((gap + c * (TILE + gap) + 4, 8), title, fill=(60, 60, 60))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet.paste(tile, (gap + c * (TILE + gap), head + gap + r * (TILE + gap)))
    sheet.save(OUT, optimize=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
