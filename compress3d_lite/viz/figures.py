"""Plotly figures: meshes, coloured points, occupancy, slices and image grids.

Every function returns a plain ``plotly.graph_objects.Figure``, so the same figure shows in
JupyterLab, Colab and VS Code and can be saved as standalone HTML (``save_html``). Anything that
steps (slices, later denoising steps) uses plotly ``frames`` + a slider, which needs no kernel;
``FigureWidget`` is never required because it often renders blank in Colab (docs/design.md §5).

Conventions, after pytorch3d's ``plot_scene`` (pytorch3d/vis/plotly_vis.py):

* the world is y-up, so every 3D scene sets ``camera.up = (0, 1, 0)``;
* scenes show the [-lim, lim]^3 data domain (lim = 1) as a cube with the axes hidden;
* point clouds are randomly subsampled to ``max_points`` (20k) and coloured with 'rgb(r,g,b)';
* colours may be floats in [0, 1] or uint8 in [0, 255] (an alpha channel is ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..data.io import atomic_write_bytes
from .images import _composite, _png_source

INSIDE_COLOR = "rgb(31,119,180)"  # plotly blue: occupied queries / cells
EYE = dict(x=0.9, y=0.6, z=1.2)  # front-right, a little above (y is up); |eye| sets the zoom


# ------------------------------------------------------------------------------------------
# input checks and colour helpers


def _as_points(points, name="points") -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {p.shape}")
    return p


def _rgb01(colors, n: int, name="colors") -> np.ndarray:
    """(n, 3|4) or (3,) colours, uint8 in [0, 255] or float in [0, 1] -> (n, 3) float in [0, 1]."""
    c = np.asarray(colors)
    if c.ndim == 1:
        c = np.broadcast_to(c, (n, len(c)))
    if c.ndim != 2 or c.shape[1] not in (3, 4) or len(c) != n:
        raise ValueError(f"{name} must have shape ({n}, 3) (or (3,) for one colour), got {c.shape}")
    c = c[:, :3]
    if np.issubdtype(c.dtype, np.integer):
        return c.astype(np.float64) / 255.0
    c = c.astype(np.float64)
    if c.size and (np.nanmin(c) < -1e-6 or np.nanmax(c) > 1 + 1e-6):
        raise ValueError(f"float {name} must lie in [0, 1] (pass uint8 for 0-255 colours), "
                         f"got values in [{np.nanmin(c):.3g}, {np.nanmax(c):.3g}]")
    return np.clip(c, 0.0, 1.0)


def rgb_strings(rgb01: np.ndarray) -> np.ndarray:
    """(n, 3) floats in [0, 1] -> (n,) strings 'rgb(r,g,b)' with integer channels."""
    q = np.round(np.asarray(rgb01) * 255).astype(int)
    return np.array([f"rgb({r},{g},{b})" for r, g, b in q])


def _subsample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted random indices of at most ``max_points`` of ``n`` items (all of them if fewer)."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _scene(lim: float | None = 1.0) -> dict:
    """Scene layout: the [-lim, lim]^3 cube, axes hidden, y-up camera (lim=None: fit the data)."""
    axis = dict(visible=False, showbackground=False)
    if lim is None:
        return dict(xaxis=axis, yaxis=axis, zaxis=axis, aspectmode="data",
                    camera=dict(up=dict(x=0, y=1, z=0), eye=EYE))
    axis = dict(axis, range=[-lim, lim], autorange=False)
    return dict(xaxis=axis, yaxis=axis, zaxis=axis, aspectmode="cube",
                camera=dict(up=dict(x=0, y=1, z=0), eye=EYE))


def _layout_3d(fig: go.Figure, title, lim) -> go.Figure:
    fig.update_layout(scene=_scene(lim), title=title, height=480, showlegend=False,
                      margin=dict(l=0, r=0, t=40 if title else 10, b=0))
    return fig


# ------------------------------------------------------------------------------------------
# traces (composable: object_figure puts several in one figure)


# Lighting for marching-cubes meshes: smooth (per-vertex) normals, a light near the camera and a
# strong ambient term, so the surface reads as a lit object and not as facets. The two epsilons are
# 0 because plotly's defaults drop the normals of the tiny slivers marching cubes makes, which then
# show as white streaks (and flat shading shows every facet of the grid as a mottled surface).
MESH_LIGHTING = dict(ambient=0.5, diffuse=0.7, specular=0.12, roughness=0.6, fresnel=0.05,
                     vertexnormalsepsilon=0.0, facenormalsepsilon=0.0)
MESH_LIGHT_POSITION = dict(x=600, y=1400, z=1200)  # above and in front, on the camera's side (EYE)


def mesh_trace(vertices, faces, vertex_colors=None, face_colors=None, name="mesh",
               flatshading: bool = False) -> go.Mesh3d:
    """(V, 3) vertices + (F, 3) int faces -> a smooth-shaded ``go.Mesh3d`` (grey without colours).
    ``flatshading=True`` shows the facets (useful for low-poly meshes, not for marching cubes)."""
    v = _as_points(vertices, "vertices")
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces must be an integer array of shape (F, 3), got {f.dtype} {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"faces index vertices 0..{len(v) - 1}, found {f.min()}..{f.max()}")
    if vertex_colors is not None and face_colors is not None:
        raise ValueError("give vertex_colors or face_colors, not both")
    color = {}
    if vertex_colors is not None:
        color["vertexcolor"] = rgb_strings(_rgb01(vertex_colors, len(v), "vertex_colors"))
    elif face_colors is not None:
        color["facecolor"] = rgb_strings(_rgb01(face_colors, len(f), "face_colors"))
    else:
        color["color"] = "lightgray"
    return go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=f[:, 0], j=f[:, 1], k=f[:, 2],
                     flatshading=flatshading, name=name, hoverinfo="skip", **color,
                     lighting=MESH_LIGHTING, lightposition=MESH_LIGHT_POSITION)


def trimesh_trace(mesh, name="mesh") -> go.Mesh3d:
    """A trimesh (vertex colours when it has them, else grey) as ``mesh_trace``; an empty mesh
    or ``None`` (no surface) gives an empty trace."""
    if mesh is None or len(mesh.faces) == 0:
        return go.Mesh3d(x=[0], y=[0], z=[0], i=[], j=[], k=[], hoverinfo="skip", name=name)
    vc = np.asarray(mesh.visual.vertex_colors)[:, :3] if mesh.visual.kind == "vertex" else None
    return mesh_trace(mesh.vertices, mesh.faces, vertex_colors=vc, name=name)


def points_trace(points, colors=None, max_points=20000, size=2, seed=0, name="points",
                 opacity=1.0) -> go.Scatter3d:
    """(N, 3) points -> ``go.Scatter3d`` markers, at most ``max_points`` of them (seeded subset)."""
    p = _as_points(points)
    keep = _subsample(len(p), max_points, seed)
    color = INSIDE_COLOR if colors is None else rgb_strings(_rgb01(colors, len(p))[keep])
    return go.Scatter3d(x=p[keep, 0], y=p[keep, 1], z=p[keep, 2], mode="markers", name=name,
                        marker=dict(size=size, color=color, line=dict(width=0)), opacity=opacity,
                        hoverinfo="skip")


def occupancy_traces(occ_points, occ_labels, max_points=20000, n_outside=0, size=2, seed=0) -> list:
    """The inside queries (blue), plus ``n_outside`` faint grey outside queries if asked."""
    p = _as_points(occ_points, "occ_points")
    labels = np.asarray(occ_labels)
    if labels.shape != (len(p),):
        raise ValueError(f"occ_labels must have shape ({len(p)},), got {labels.shape}")
    inside = labels > 0.5 if labels.dtype != bool else labels
    traces = [points_trace(p[inside], max_points=max_points, size=size, seed=seed, name="inside")]
    if n_outside:
        traces.append(points_trace(p[~inside], colors=(0.6, 0.6, 0.6), max_points=n_outside,
                                   size=size, seed=seed + 1, name="outside", opacity=0.15))
    return traces


# ------------------------------------------------------------------------------------------
# 3D figures


def mesh_figure(vertices, faces, vertex_colors=None, face_colors=None, title=None,
                lim: float | None = 1.0, flatshading: bool = False) -> go.Figure:
    """A triangle mesh as ``go.Mesh3d``; colours per vertex or per face (rgb floats or uint8).
    Smooth shading suits marching-cubes meshes; ``flatshading=True`` suits modelled (CAD-like) ones."""
    trace = mesh_trace(vertices, faces, vertex_colors, face_colors, flatshading=flatshading)
    return _layout_3d(go.Figure(trace), title, lim)


def colored_mesh_trace(cmesh, name="mesh") -> go.Mesh3d:
    """A ``data.surface.ColoredMesh`` (a toy object or an imported asset) with each face coloured at
    its centroid, flat-shaded: these meshes have few, large faces whose shared vertices would
    smear smooth shading across edges."""
    faces = np.arange(len(cmesh.mesh.faces))
    rgb = cmesh.colors_at(faces, np.full((len(faces), 3), 1 / 3))
    return mesh_trace(cmesh.mesh.vertices, cmesh.mesh.faces, face_colors=rgb, name=name, flatshading=True)


def colored_mesh_figure(cmesh, title=None, lim: float | None = 1.0) -> go.Figure:
    """A ``data.surface.ColoredMesh`` as ``colored_mesh_trace``."""
    return _layout_3d(go.Figure(colored_mesh_trace(cmesh)), title, lim)


def compare_meshes(meshes: list, titles: list, title=None, lim: float = 1.0) -> go.Figure:
    """Meshes side by side, one scene each, all seen from the same camera: trimeshes (e.g.
    generated ones, smooth-shaded with their vertex colours) or ``ColoredMesh`` objects (e.g. the
    true object, flat-shaded); ``None`` shows an empty scene."""
    if len(meshes) != len(titles) or not meshes:
        raise ValueError(f"got {len(meshes)} meshes and {len(titles)} titles")
    fig = make_subplots(rows=1, cols=len(meshes), specs=[[{"type": "scene"}] * len(meshes)],
                        subplot_titles=titles, horizontal_spacing=0.01)
    for k, m in enumerate(meshes):
        trace = colored_mesh_trace(m) if hasattr(m, "colors_at") else trimesh_trace(m)
        fig.add_trace(trace, row=1, col=k + 1)
    fig.update_scenes(**_scene(lim))
    fig.update_layout(title=title, height=400, width=330 * len(meshes), showlegend=False,
                      margin=dict(l=0, r=0, t=60 if title else 30, b=0))
    return fig


def points_figure(points, colors=None, max_points=20000, size=2, seed=0, title=None,
                  lim: float | None = 1.0) -> go.Figure:
    """A point cloud as ``go.Scatter3d``, randomly subsampled to at most ``max_points``."""
    trace = points_trace(points, colors, max_points, size, seed)
    return _layout_3d(go.Figure(trace), title, lim)


def occupancy_figure(occ_points, occ_labels, max_points=20000, n_outside=0, size=2, seed=0,
                     title=None, lim: float | None = 1.0) -> go.Figure:
    """Occupancy queries labelled inside, optionally with a faint sample of outside ones."""
    traces = occupancy_traces(occ_points, occ_labels, max_points, n_outside, size, seed)
    return _layout_3d(go.Figure(traces), title, lim)


def object_figure(example: dict, max_points=20000, title=None) -> go.Figure:
    """One saved object (``data.io.load_object``) side by side: coloured surface points |
    inside occupancy queries (| first rendered view, when the object has views)."""
    n_in = int(np.count_nonzero(example["occ_labels"]))
    panels = [f"surface points ({len(example['points'])})",
              f"inside queries ({n_in} of {len(example['occ_labels'])})"]
    specs = [{"type": "scene"}, {"type": "scene"}]
    if "images" in example:
        panels.append("view 0")
        specs.append({"type": "xy"})
    fig = make_subplots(rows=1, cols=len(specs), specs=[specs], subplot_titles=panels,
                        horizontal_spacing=0.02)
    fig.add_trace(points_trace(example["points"], example["colors"], max_points), row=1, col=1)
    for trace in occupancy_traces(example["occ_points"], example["occ_labels"], max_points):
        fig.add_trace(trace, row=1, col=2)
    if "images" in example:
        fig.add_trace(go.Image(source=_png_source(_composite(example["images"][0], (255, 255, 255)))),
                      row=1, col=3)
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    fig.update_scenes(**_scene())
    default = example.get("category", example.get("source"))
    fig.update_layout(title=title or (str(default) if default is not None else None), height=420,
                      width=360 * len(specs), showlegend=False, margin=dict(l=0, r=0, t=60, b=0))
    return fig


# ------------------------------------------------------------------------------------------
# slices: a 3D volume as a stack of 2D heatmaps with a slider (the MRI-slices pattern)

_PLANE = {"z": ("x", "y"), "x": ("z", "y"), "y": ("x", "z")}  # slice axis -> (horizontal, vertical)
_AXIS = {"x": 0, "y": 1, "z": 2}


def _slice(volume_or_fn, axis, coords, idx) -> np.ndarray:
    """The (vertical, horizontal) slice at grid index ``idx`` along ``axis``."""
    h, v = _PLANE[axis]
    if callable(volume_or_fn):
        vv, hh = np.meshgrid(coords, coords, indexing="ij")  # (R, R) rows = vertical
        pts = np.zeros((hh.size, 3))
        pts[:, _AXIS[h]], pts[:, _AXIS[v]], pts[:, _AXIS[axis]] = hh.ravel(), vv.ravel(), coords[idx]
        return np.asarray(volume_or_fn(pts)).reshape(len(coords), len(coords))
    s = np.take(volume_or_fn, idx, axis=_AXIS[axis])  # 2D, remaining axes in x, y, z order
    return s if _AXIS[h] > _AXIS[v] else s.T  # rows must be the vertical axis


def occupancy_slices(volume_or_fn: np.ndarray | Callable, axis="z", resolution=64, n_frames=16,
                     colors=None, title=None, lim=1.0) -> go.Figure:
    """Heatmap slices through an occupancy volume with a slider and a play button.

    ``volume_or_fn``: an (R, R, R) array indexed ``[x, y, z]`` on ``linspace(-lim, lim, R)``,
    or a callable ``(N, 3) points -> (N,)`` bool/float evaluated on a ``resolution``^2 grid per
    slice. ``n_frames`` slices are spread evenly along ``axis``; the figure starts in the middle.
    ``colors``: a plotly colorscale (default white -> blue, fine for 0/1 occupancy).
    """
    if axis not in _PLANE:
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    if not callable(volume_or_fn):
        volume_or_fn = np.asarray(volume_or_fn)
        if volume_or_fn.ndim != 3 or len(set(volume_or_fn.shape)) != 1:
            raise ValueError(f"volume must be a cubic (R, R, R) array, got {volume_or_fn.shape}")
        resolution = volume_or_fn.shape[0]
    if not 1 <= n_frames <= resolution:
        raise ValueError(f"n_frames must be in 1..{resolution} (the grid resolution), got {n_frames}")
    coords = np.linspace(-lim, lim, resolution)
    idx = np.round(np.linspace(0, resolution - 1, n_frames)).astype(int)
    slices = [_slice(volume_or_fn, axis, coords, i) for i in idx]
    # 0/1 occupancy travels as uint8 (8x smaller saved figures), anything else as float32
    dtype = np.uint8 if all(s.dtype == bool for s in slices) else np.float32
    slices = [s.astype(dtype) for s in slices]
    zmin, zmax = float(min(s.min() for s in slices)), float(max(s.max() for s in slices))
    scale = colors or [[0.0, "white"], [1.0, INSIDE_COLOR]]
    h, v = _PLANE[axis]

    def heatmap(s):
        return go.Heatmap(z=s, x=coords, y=coords, colorscale=scale, zmin=zmin,
                          zmax=max(zmax, zmin + 1e-9), showscale=False,
                          hovertemplate=f"{h}=%{{x:.2f}} {v}=%{{y:.2f}}: %{{z}}<extra></extra>")

    names = [f"{axis}={coords[i]:+.2f}" for i in idx]
    start = n_frames // 2
    fig = go.Figure(data=[heatmap(slices[start])],
                    frames=[go.Frame(data=[heatmap(s)], name=n) for s, n in zip(slices, names)])
    anim = dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    steps = [dict(method="animate", label=n, args=[[n], anim]) for n in names]
    play = dict(type="buttons", direction="left", x=0.0, y=-0.05, xanchor="left", yanchor="top",
                showactive=False, buttons=[
                    dict(label="▶", method="animate",
                         args=[None, dict(anim, frame=dict(duration=150, redraw=True), fromcurrent=True)]),
                    dict(label="❚❚", method="animate", args=[[None], anim])])
    fig.update_layout(
        title=title or f"occupancy slices along {axis}", width=520, height=600,
        xaxis=dict(title=h, range=[-lim, lim], constrain="domain"),
        yaxis=dict(title=v, range=[-lim, lim], scaleanchor="x", constrain="domain"),
        updatemenus=[play], margin=dict(l=40, r=20, t=50, b=20),
        sliders=[dict(active=start, steps=steps, x=0.2, len=0.8, y=-0.02, yanchor="top",
                      currentvalue=dict(prefix=""), pad=dict(t=30))])
    return fig


def mesh_steps_figure(meshes, names, title=None, lim: float | None = 1.0) -> go.Figure:
    """A sequence of coloured trimeshes (e.g. the decoded x0 estimate at each denoising step)
    with a slider and a play button; plotly frames, so it works without a kernel (Colab, HTML).
    ``None`` entries (no surface yet) show as an empty scene."""
    if len(meshes) != len(names) or not meshes:
        raise ValueError(f"got {len(meshes)} meshes and {len(names)} names")

    start = len(meshes) - 1
    fig = go.Figure(data=[trimesh_trace(meshes[start])],
                    frames=[go.Frame(data=[trimesh_trace(m)], name=n) for m, n in zip(meshes, names)])
    anim = dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    steps = [dict(method="animate", label=n, args=[[n], anim]) for n in names]
    play = dict(type="buttons", direction="left", x=0.0, y=0.0, xanchor="left", yanchor="top", showactive=False,
                buttons=[dict(label="▶", method="animate",
                              args=[None, dict(anim, frame=dict(duration=300, redraw=True), fromcurrent=True)]),
                         dict(label="❚❚", method="animate", args=[[None], anim])])
    _layout_3d(fig, title, lim)
    fig.update_layout(updatemenus=[play], height=540,
                      sliders=[dict(active=start, steps=steps, x=0.2, len=0.8, y=0.0, yanchor="top",
                                    currentvalue=dict(prefix=""), pad=dict(t=10))])
    return fig


# ------------------------------------------------------------------------------------------
# saving and an optional widget layer


def save_html(fig, path, include_plotlyjs="inline", title: str = "compress3d_lite") -> Path:
    """Write ``fig`` (one figure, or a list of figures stacked on one page) as standalone HTML,
    atomically. The default ``"inline"`` (or True) embeds plotly.js (~4 MB), so the page works
    offline; ``"cdn"`` keeps the file small but shows nothing without internet. Animations do
    not start on their own. Returns the path."""
    if include_plotlyjs == "inline":
        include_plotlyjs = True
    figs = list(fig) if isinstance(fig, (list, tuple)) else [fig]
    if len(figs) == 1:
        html = figs[0].to_html(include_plotlyjs=include_plotlyjs, full_html=True, auto_play=False)
    else:  # plotly.js once, then one div per figure
        divs = [f.to_html(include_plotlyjs=include_plotlyjs if i == 0 else False, full_html=False,
                          auto_play=False) for i, f in enumerate(figs)]
        html = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head>"
                f"<body>{''.join(divs)}</body></html>")
    atomic_write_bytes(path, html.encode("utf-8"))
    return Path(path)


def interactive_views(examples: list, titles=None):
    """Optional ipywidgets layer: a dropdown that shows ``object_figure`` of one of ``examples``.
    Re-displays a plain figure in an Output widget (no FigureWidget, so it also works in Colab
    once ``google.colab.output.enable_custom_widget_manager()`` has run)."""
    import ipywidgets as widgets  # optional (the notebooks extra): only this widget layer needs it
    from IPython.display import display

    titles = titles or [str(e.get("category", e.get("source", i))) for i, e in enumerate(examples)]
    pick = widgets.Dropdown(options=list(zip(titles, range(len(examples)))), description="object")
    out = widgets.Output()

    def show(change=None):
        out.clear_output(wait=True)
        with out:
            display(object_figure(examples[pick.value]))

    pick.observe(show, names="value")
    show()
    return widgets.VBox([pick, out])
