"""Figures that render anywhere (docs/design.md §5): the interactive plotly figure where a kernel
is live, and a PNG of the same figure stored beside it for every reader without one.

A notebook output is a bundle of representations and each reader shows the richest it knows:
JupyterLab and VS Code draw plotly's own mimetype (interactive); GitHub, nbviewer and an HTML
export (``jupyter nbconvert --to html``) know no plotly and show the PNG. The PNG is drawn by
kaleido, plotly's image exporter, which drives a Chrome or Chromium browser. Where kaleido or a
browser is missing the figure stays interactive only, and one log line says so. Colab draws
figures with its own renderer and keeps it.

    use_static_figures()   # once per notebook (``notebook.start`` calls it)
    fig                    # shows interactively, and stores a PNG too
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import os
import sys
import warnings

import plotly.io as pio
from plotly.io._base_renderers import PlotlyRenderer

log = logging.getLogger(__name__)

RENDERER = "compress3d_interactive_and_png"
STATIC_ENV = "C3D_STATIC_FIGURES"  # 0: interactive figures only (no browser started)


class InteractiveAndPng(PlotlyRenderer):
    """plotly's mimetype renderer plus an ``image/png`` of the same figure. The first failure to
    draw a PNG (no kaleido, no browser) turns PNGs off for the rest of the session."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.png_ok = True

    def to_mimebundle(self, fig_dict):
        bundle = super().to_mimebundle(fig_dict)
        if self.png_ok:
            try:
                png = pio.to_image(fig_dict, format="png", scale=self.scale, validate=False)
            except Exception as e:  # noqa: BLE001 - any failure of the exporter: stay interactive
                self.png_ok = False
                log.warning("static figure images are off (kaleido could not draw one: %s); figures stay "
                            "interactive only", str(e).splitlines()[0] if str(e) else type(e).__name__)
            else:
                bundle["image/png"] = base64.b64encode(png).decode("ascii")
        return bundle


def static_figures_wanted() -> bool:
    """False where PNGs are not wanted or cannot be drawn: on Colab (its own renderer), with
    ``C3D_STATIC_FIGURES=0``, or without kaleido installed."""
    if os.environ.get(STATIC_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return "google.colab" not in sys.modules and importlib.util.find_spec("kaleido") is not None


def use_static_figures(scale: float = 1.0) -> bool:
    """Make every plotly figure shown from now on carry a PNG beside its interactive form. Returns
    whether it did (see ``static_figures_wanted``); where it did not, plotly's default stays."""
    if not static_figures_wanted():
        return False
    pio.renderers[RENDERER] = InteractiveAndPng(scale=scale)
    pio.renderers.default = RENDERER
    # plotly passes its own browser options on every image; a running server has its own: harmless
    warnings.filterwarnings("ignore", message="The kopts argument is ignored")
    start_browser()
    return True


def start_browser() -> None:
    """One browser for the whole session: ~1 s a figure instead of ~4 s."""
    try:
        import kaleido  # here, not at the top: optional (the notebooks extra), and it starts a browser

        kaleido.start_sync_server(silence_warnings=True)
    except Exception as e:  # noqa: BLE001 - without the server each PNG starts its own browser
        log.info("kaleido server not started (%s): each static figure starts its own browser", e)
