"""Looking at triplanes: PCA colour images of the planes and one explorer figure of a decoded triplane.

A triplane is three (C, R, R) feature maps xy [x, y], xz [x, z], yz [y, z] (docs/paper.md §2). To
show one we need two things the planes alone do not say:

* **colour**: ``pca_rgb`` projects the C channels of every texel onto the first three principal
  components, with one basis for all maps shown together, so the same colour means the same
  feature on every plane (and on every step of a denoising run, when the basis is fitted once);
* **orientation**: ``plane_image`` turns plane k into an image whose horizontal and vertical axes
  are those of ``PLANE_VIEWS`` (x right and y up for xy), the frame the slices of ``figures`` use.

``triplane_explorer`` puts the planes, the field they decode to (occupancy and colour slices) and
the extracted mesh of one object into a single plotly figure with sliders. Sliders and frames are
plain plotly, so the figure needs no kernel: it works in JupyterLab, Colab and a saved HTML page.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..mesh import MeshingError, extract_mesh, query_points
from .figures import EYE, trimesh_trace
from .images import _png_source

# plane name, horizontal axis, vertical axis of its image (the slices' frame: slice axis z shows x, y)
PLANE_VIEWS = (("xy", "x", "y"), ("xz", "x", "z"), ("yz", "z", "y"))
SLICE_AXES = ("z", "y", "x")  # the axis each plane collapses; a slice along it shows the plane's view
_AXIS = {"x": 0, "y": 1, "z": 2}


def _numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def pca_basis(maps) -> tuple:
    """(n, C, H, W) feature maps -> (mean (C,), components (3, C), low (3,), high (3,)): the first
    three principal components of the channels over all n*H*W texels, each with a sign that makes
    its largest loading positive (so the colours repeat), and the 1% / 99% quantiles of the
    projections, the range ``pca_rgb`` stretches to [0, 1]."""
    m = _numpy(maps)
    if m.ndim != 4:
        raise ValueError(f"maps must be (n, C, H, W), got shape {m.shape}")
    X = m.transpose(0, 2, 3, 1).reshape(-1, m.shape[1])  # (n*H*W, C)
    mean = X.mean(0)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
    comps = np.zeros((3, X.shape[1]))
    k = min(3, vt.shape[0])
    comps[:k] = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(1)])[:, None]
    Y = (X - mean) @ comps.T  # (n*H*W, 3)
    return mean, comps, np.quantile(Y, 0.01, axis=0), np.quantile(Y, 0.99, axis=0)


def pca_rgb(maps, basis: tuple | None = None) -> np.ndarray:
    """(n, C, H, W) feature maps -> (n, H, W, 3) floats in [0, 1], the first three principal
    components as red, green and blue. ``basis`` (from ``pca_basis``) reuses a basis fitted on
    other maps; by default it is fitted on these (one basis for all n maps, so they compare)."""
    m = _numpy(maps)
    mean, comps, lo, hi = basis if basis is not None else pca_basis(m)
    n, C, H, W = m.shape
    if C != len(mean):
        raise ValueError(f"the basis was fitted on {len(mean)} channels, the maps have {C}")
    Y = (m.transpose(0, 2, 3, 1).reshape(-1, C) - mean) @ comps.T
    return ((Y - lo) / np.maximum(hi - lo, 1e-8)).clip(0, 1).reshape(n, H, W, 3)


def plane_image(a: np.ndarray, k: int) -> np.ndarray:
    """Plane k's array, indexed by the plane's own axes ([x, y], [x, z] or [y, z], maybe with trailing
    channels), as an image: row 0 at the top, horizontal and vertical axes as in ``PLANE_VIEWS``."""
    a = np.asarray(a)
    return np.flipud(a) if k == 2 else np.flipud(np.swapaxes(a, 0, 1))  # yz is already [vertical, horizontal]


def triplane_rgb(planes, basis: tuple | None = None) -> list:
    """One triplane (3, C, R, R) (or (1, 3, C, R, R)) -> three oriented RGB images in [0, 1]
    (xy, xz, yz) with one PCA basis for the three planes."""
    p = _numpy(planes)
    p = p[0] if p.ndim == 5 else p
    if p.ndim != 4 or p.shape[0] != 3:
        raise ValueError(f"a triplane is (3, C, R, R) or (1, 3, C, R, R), got shape {np.shape(planes)}")
    rgb = pca_rgb(p, basis)
    return [plane_image(rgb[k], k) for k in range(3)]


def _u8(rgb01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb01, 0, 1) * 255).astype(np.uint8)


def _field_volume(model, planes, res: int) -> tuple:
    """Occupancy probability (res, res, res) and colour (res, res, res, 3), indexed [x, y, z] at
    the voxel centres of [-1, 1]^3 (the grid ``mesh.decode_grid`` uses)."""
    c = -1 + (np.arange(res) + 0.5) * 2 / res
    xyz = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    logits, rgb = query_points(model, planes, xyz)
    prob = 1 / (1 + np.exp(-np.clip(logits, -30, 30)))
    return prob.reshape(res, res, res), np.clip(rgb, 0, 1).reshape(res, res, res, 3), c


def _slice_image(vol: np.ndarray, axis: str, i: int) -> np.ndarray:
    """The slice at index i along ``axis`` as an image in that axis's view (``PLANE_VIEWS``)."""
    k = SLICE_AXES.index(axis)
    return plane_image(np.take(vol, i, axis=_AXIS[axis]), k)  # remaining axes are the plane's own


_BLUES = np.array([[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]], float)


def _blues(p: np.ndarray) -> np.ndarray:
    """Occupancy probability in [0, 1] -> RGB uint8 on a white-to-dark-blue scale."""
    x = np.clip(p, 0, 1) * (len(_BLUES) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_BLUES) - 2)
    w = (x - lo)[..., None]
    return np.round(_BLUES[lo] * (1 - w) + _BLUES[lo + 1] * w).astype(np.uint8)


def _outline(axis: str, value: float) -> go.Scatter3d:
    """The square where the slice plane at ``value`` along ``axis`` cuts the [-1, 1]^3 cube."""
    sq = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], float)
    pts = np.zeros((5, 3))
    others = [a for a in range(3) if a != _AXIS[axis]]
    pts[:, others[0]], pts[:, others[1]], pts[:, _AXIS[axis]] = sq[:, 0], sq[:, 1], value
    color = {"x": "crimson", "y": "seagreen", "z": "darkorange"}[axis]
    return go.Scatter3d(x=pts[:, 0], y=pts[:, 1], z=pts[:, 2], mode="lines", hoverinfo="skip",
                        line=dict(color=color, width=4), name=f"{axis} slice")


ANIMATE = dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))


def play_buttons(frame_ms: int) -> dict:
    """▶ / ❚❚ buttons that play the figure's frames, one every ``frame_ms``, from the current one."""
    return dict(type="buttons", direction="left", x=0.0, y=-0.02, xanchor="left", yanchor="top", showactive=False,
                pad=dict(t=10),
                buttons=[dict(label="▶", method="animate",
                              args=[None, dict(ANIMATE, frame=dict(duration=frame_ms, redraw=True), fromcurrent=True)]),
                         dict(label="❚❚", method="animate", args=[[None], ANIMATE])])


def _bare_axes(fig: go.Figure, zoom: float = 1.0) -> None:
    """No 2D axes; every scene the [-1, 1]^3 cube, y up, seen from ``EYE`` (scaled by ``zoom``)."""
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    axis = dict(visible=False, range=[-1, 1], autorange=False)
    fig.update_scenes(xaxis=axis, yaxis=axis, zaxis=axis, aspectmode="cube",
                      camera=dict(up=dict(x=0, y=1, z=0), eye={k: zoom * v for k, v in EYE.items()}))


def triplane_explorer(model, latent=None, planes=None, resolution: int = 48, n_slices: int = 13,
                      mesh_resolution: int = 96, mesh=None, title: str | None = None) -> go.Figure:
    """One interactive figure of one decoded triplane: what it stores and what it means.

    ``model``: the triplane VAE (``decode`` for a latent, ``query`` for the field). Give either
    ``latent`` (1, 3, c', r', r'), in the VAE's own (not normalised) scale, which is decoded
    first, or the high-res ``planes`` (1, 3, C, r, r). ``mesh``: a trimesh to show instead of
    extracting one at ``mesh_resolution``.

    Panels, all of the same object:

    * row 1: the three planes as PCA colour images (one basis for the three);
    * row 2: one channel of the three planes as heatmaps, with a **channel** slider;
    * rows 3-4: occupancy probability and decoded colour (grey where p < 0.5) on slices along
      z, y and x (each in its plane's view), with a **slice** slider and a play button;
    * right: the extracted coloured mesh, with the three slice positions drawn as outlines.

    Sliders restyle traces or play plotly frames, so no kernel is needed.
    """
    if (latent is None) == (planes is None):
        raise ValueError("give either latent= (decoded by the model first) or planes=, not both or neither")
    if not 2 <= n_slices <= resolution:
        raise ValueError(f"n_slices must be in 2..{resolution} (the slice resolution), got {n_slices}")
    with torch.no_grad():
        if latent is not None:
            if latent.ndim != 5 or latent.shape[0] != 1:
                raise ValueError(f"latent must be one latent triplane (1, 3, c', r', r'), got {tuple(latent.shape)}")
            planes = model.decode(latent)  # (1, 3, C, r, r)
    if planes.ndim != 5 or planes.shape[:2] != (1, 3):
        raise ValueError(f"planes must be one triplane (1, 3, C, r, r), got {tuple(planes.shape)}")
    p = _numpy(planes)[0]  # (3, C, r, r)
    C = p.shape[1]
    if mesh is None:
        try:
            mesh = extract_mesh(model, planes, mesh_resolution)
        except MeshingError:
            mesh = None  # the field has no surface: an empty scene
    prob, rgb, coords = _field_volume(model, planes, resolution)
    idx = np.round(np.linspace(0, resolution - 1, n_slices)).astype(int)
    start = n_slices // 2

    fig = make_subplots(
        rows=4, cols=4, column_widths=[0.19, 0.19, 0.19, 0.43], horizontal_spacing=0.02, vertical_spacing=0.05,
        specs=[[{"type": "xy"}] * 3 + [{"type": "scene", "rowspan": 4}]] + [[{"type": "xy"}] * 3 + [None]] * 3,
        subplot_titles=[f"{n} plane (PCA)" for n, _, _ in PLANE_VIEWS] + ["decoded mesh"]
        + [f"{n}, one channel" for n, _, _ in PLANE_VIEWS]
        + [f"occupancy, {a} slice ({h}→, {v}↑)" for a, (_, h, v) in zip(SLICE_AXES, PLANE_VIEWS)]
        + [f"colour, {a} slice" for a in SLICE_AXES])
    # row 1: PCA images
    for k, im in enumerate(triplane_rgb(p)):
        fig.add_trace(go.Image(source=_png_source(_u8(im)), hoverinfo="skip"), row=1, col=k + 1)
    # row 2: one channel per plane, symmetric colour range per channel
    chan = [[plane_image(p[k, c], k) for k in range(3)] for c in range(C)]
    ranges = [float(np.abs(p[:, c]).max()) or 1.0 for c in range(C)]
    for k in range(3):
        fig.add_trace(go.Heatmap(z=chan[0][k].astype(np.float32), zmin=-ranges[0], zmax=ranges[0],
                                 colorscale="RdBu_r", showscale=k == 2,
                                 colorbar=dict(len=0.2, y=0.63, x=0.575, thickness=10),
                                 hovertemplate="%{z:.3f}<extra></extra>"), row=2, col=k + 1)
    chan_traces = [3, 4, 5]
    # rows 3-4: slices
    def slice_traces(j):
        i = idx[j]
        occ = [go.Image(source=_png_source(_blues(_slice_image(prob, a, i))), hoverinfo="skip") for a in SLICE_AXES]
        col = []
        for a in SLICE_AXES:
            inside = _slice_image(prob, a, i)[..., None] > 0.5
            col.append(go.Image(source=_png_source(_u8(np.where(inside, _slice_image(rgb, a, i), 0.85))),
                                hoverinfo="skip"))
        return occ + col + [_outline(a, coords[i]) for a in SLICE_AXES]

    first = slice_traces(start)
    for k, tr in enumerate(first[:6]):
        fig.add_trace(tr, row=3 + k // 3, col=k % 3 + 1)
    fig.add_trace(trimesh_trace(mesh), row=1, col=4)
    for tr in first[6:]:
        fig.add_trace(tr, row=1, col=4)
    slice_ids = list(range(6, 12)) + [13, 14, 15]  # the mesh is trace 12

    names = [f"{coords[i]:+.2f}" for i in idx]
    fig.frames = [go.Frame(data=slice_traces(j), traces=slice_ids, name=names[j]) for j in range(n_slices)]
    anim = ANIMATE
    slice_slider = dict(active=start, x=0.1, len=0.47, y=-0.02, yanchor="top", pad=dict(t=10),
                        currentvalue=dict(prefix="slice at x = y = z = "),
                        steps=[dict(method="animate", label=n, args=[[n], anim]) for n in names])
    chan_slider = dict(active=0, x=0.62, len=0.38, y=-0.02, yanchor="top", pad=dict(t=10),
                       currentvalue=dict(prefix="channel "),
                       steps=[dict(method="restyle", label=str(c),
                                   args=[{"z": [chan[c][k].astype(np.float32) for k in range(3)],
                                          "zmin": [-ranges[c]] * 3, "zmax": [ranges[c]] * 3}, chan_traces])
                              for c in range(C)])
    play = play_buttons(200)
    _bare_axes(fig, zoom=1.3)
    for k in range(3):  # heatmaps keep square texels (images do by themselves)
        fig.update_yaxes(scaleanchor=f"x{k + 4}", row=2, col=k + 1)
    fig.update_layout(title=title or f"decoded triplane: {C} channels at {p.shape[-1]}², field sliced at {resolution}³",
                      width=1100, height=980, showlegend=False, margin=dict(l=10, r=10, t=70, b=90),
                      sliders=[slice_slider, chan_slider], updatemenus=[play])
    return fig


def denoising_figure(x_t: list, x0: list, meshes: list, names: list, title: str | None = None,
                     start: int = -1) -> go.Figure:
    """The reverse process step by step: for each step the noisy latent x_t, the model's estimate
    of the clean latent x0 (both (1, 3, c', r', r'), as PCA images with one basis fitted on the
    last x0, so colours compare across steps) and the mesh decoded from that estimate. A slider
    and a play button walk the steps (plotly frames: no kernel needed); ``start`` is the step shown
    first (default: the last)."""
    if not (len(x_t) == len(x0) == len(meshes) == len(names)) or not names:
        raise ValueError(f"got {len(x_t)} x_t, {len(x0)} x0, {len(meshes)} meshes and {len(names)} names")
    basis = pca_basis(_numpy(x0[-1])[0])

    def strip(z):  # (1, 3, c, r, r) -> one RGB uint8 image of the three planes side by side
        ims = triplane_rgb(z, basis)
        gap = np.ones((ims[0].shape[0], 1, 3))
        return _u8(np.concatenate([ims[0], gap, ims[1], gap, ims[2]], axis=1))

    def traces(j):
        return [go.Image(source=_png_source(strip(x_t[j])), hoverinfo="skip"),
                go.Image(source=_png_source(strip(x0[j])), hoverinfo="skip"), trimesh_trace(meshes[j])]

    fig = make_subplots(rows=2, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.03,
                        specs=[[{"type": "xy"}, {"type": "scene", "rowspan": 2}], [{"type": "xy"}, None]],
                        subplot_titles=["noisy latent x_t (planes xy | xz | yz)", "mesh of the x0 estimate",
                                        "the model's estimate of the clean latent x0"])
    start = range(len(names))[start]  # IndexError for a step that does not exist
    for tr, (r, c) in zip(traces(start), [(1, 1), (2, 1), (1, 2)]):
        fig.add_trace(tr, row=r, col=c)
    fig.frames = [go.Frame(data=traces(j), traces=[0, 1, 2], name=n) for j, n in enumerate(names)]
    anim, play = ANIMATE, play_buttons(400)
    _bare_axes(fig)
    fig.update_layout(title=title, width=1000, height=560, showlegend=False, margin=dict(l=10, r=10, t=60, b=70),
                      updatemenus=[play],
                      sliders=[dict(active=start, x=0.12, len=0.86, y=-0.02, yanchor="top", pad=dict(t=10),
                                    currentvalue=dict(prefix=""),
                                    steps=[dict(method="animate", label=n, args=[[n], anim]) for n in names])])
    return fig
