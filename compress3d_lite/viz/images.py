"""Images in plotly: RGB(A) renders and depth maps in a grid, and the PNG data URIs that keep
saved pages small (a go.Image with a ``source`` is ~10x smaller than one with a pixel array)."""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots


def _composite(rgba, background) -> np.ndarray:
    """RGB(A) uint8 (or float in [0, 1]) -> RGB uint8 with alpha blended over ``background``."""
    img = np.asarray(rgba)
    img = np.round(img * 255).clip(0, 255) if np.issubdtype(img.dtype, np.floating) else img
    img = img.astype(np.float64)
    if img.shape[-1] == 3:
        return img.astype(np.uint8)
    a = img[..., 3:] / 255.0
    out = img[..., :3] * a + np.asarray(background, np.float64)[:3] * (1 - a)
    return np.round(out).astype(np.uint8)


def _png_source(rgb: np.ndarray) -> str:
    """An RGB uint8 array as a PNG data URI: ~10x smaller in a saved page than a pixel array."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _as_image_list(images) -> list:
    if isinstance(images, np.ndarray):
        if images.ndim == 4 or (images.ndim == 3 and images.shape[-1] not in (3, 4)):
            return list(images)  # a batch of RGB(A) images or of depth maps
        return [images]
    return [np.asarray(im) for im in images]


def image_grid(images, titles=None, cols=4, background=(255, 255, 255), panel_px=200,
               value_name: str = "depth") -> go.Figure:
    """A grid of images: RGB(A) arrays (H, W, 3|4) are composited over ``background`` and drawn
    with ``go.Image``; 2-D arrays are maps of one value (``value_name``: depth by default, or an
    alpha mask, ...), drawn as heatmaps on one shared colour scale named after it, with 0
    (background) left transparent."""
    ims = _as_image_list(images)
    for k, im in enumerate(ims):
        if not (im.ndim == 2 or (im.ndim == 3 and im.shape[-1] in (3, 4))):
            raise ValueError(f"image {k} must be (H, W), (H, W, 3) or (H, W, 4), got {im.shape}")
    if titles is not None and len(titles) != len(ims):
        raise ValueError(f"got {len(titles)} titles for {len(ims)} images")
    cols = max(1, min(cols, len(ims)))
    rows = -(-len(ims) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.06 if titles else 0.01)
    depth = np.concatenate([im[im > 0].ravel() for im in ims if im.ndim == 2] + [np.zeros(0)])
    for k, im in enumerate(ims):
        row, col = k // cols + 1, k % cols + 1
        if im.ndim == 3:
            fig.add_trace(go.Image(source=_png_source(_composite(im, background)), hoverinfo="skip"),
                          row=row, col=col)
        else:
            z = np.where(im > 0, im, np.nan).astype(np.float32)
            fig.add_trace(go.Heatmap(z=z, coloraxis="coloraxis",
                                     hovertemplate=value_name + " %{z:.3f}<extra></extra>"), row=row, col=col)
            fig.update_yaxes(autorange="reversed", scaleanchor=f"x{k + 1 if k else ''}", row=row, col=col)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    if depth.size:  # one colour scale for all 2-D maps, so views compare
        fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=float(depth.min()),
                                         cmax=float(depth.max()), colorbar=dict(title=value_name, thickness=12)))
    top = 55 if titles else 30  # room for the modebar above the first row's titles, so it covers none of them
    fig.update_layout(width=panel_px * cols + 80, height=(panel_px + (30 if titles else 5)) * rows + top - 10,
                      margin=dict(l=5, r=5, t=top, b=5), plot_bgcolor="rgba(0,0,0,0)")
    return fig
