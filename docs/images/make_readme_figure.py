"""The README's picture: held-out toy objects, one 64 px view each in, the shipped course pipeline's
coloured mesh out, rendered from three cameras beside the true object.

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
    pipe = Compress3DPipeline.from_pretrained("course", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    spec = SampleSpec()
    cams = np.stack([look_at(4.6 * np.array([np.cos(np.radians(20)) * np.sin(a), np.sin(np.radians(20)),
                                               np.cos(np.radians(20)) * np.cos(a)]))
                     for a in np.radians([30, 150, 270])])
    rows = []
    for i in OBJECTS:
        obj = make_toy_object(SPLITS["test"], i)
        rng = np.random.default_rng([SPLITS["test"], i, 5])
        cam = orbit_cameras(1, rng, spec.radius, spec.elevation_deg)
        view, _ = render_views(obj.colored_mesh(), cam, intrinsics(INPUT_RES, spec.fov_deg), INPUT_RES)
        out = pipe(load_image(view[0]), seed=0)  # the checkpoint's sampler, steps and guidance
        generated = render_trimesh(out.mesh, cams, 192)
        truth, _ = render_views(obj.colored_mesh(), cams, intrinsics(192, spec.fov_deg), 192)
        rows.append([white(view[0])] + [white(g) for g in generated] + [white(truth[0])])
        print(f"{obj.category}: {len(out.mesh.faces)} faces, {out.timings['total']:.2f} s")
    gap, head = 8, 28
    sheet = Image.new("RGB", (5 * TILE + 6 * gap, len(rows) * (TILE + gap) + gap + head), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(["input (64 px)", "generated, view 1", "view 2", "view 3", "true object, view 1"]):
        draw.text((gap + c * (TILE + gap) + 4, 8), title, fill=(60, 60, 60))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet.paste(tile, (gap + c * (TILE + gap), head + gap + r * (TILE + gap)))
    sheet.save(OUT, optimize=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
