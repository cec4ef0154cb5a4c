"""What a reader without a kernel sees: execute course notebooks from copies outside the
repository, export each to HTML (as GitHub, nbviewer and `jupyter nbconvert --to html` show a
notebook: no kernel, no plotly), count the figures that carry a static image, and screenshot the
page in headless Chromium.

    python benchmarks/notebook_html.py 01_triplanes 07_image_to_3d --out /tmp/html [--full] [--no-screenshot]

Prints one line per notebook: seconds to execute, figures, figures with a PNG, HTML size, and the
screenshot's path (full page at 1100 px wide). Needs the `notebooks` extra (kaleido) and a Chrome
or Chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLOTLY = "application/vnd.plotly.v1+json"


def figure_counts(executed: Path) -> tuple:
    """(figure outputs, of which with an image/png) of an executed notebook."""
    nb = json.loads(executed.read_text())
    outs = [o for c in nb["cells"] for o in c.get("outputs", []) if PLOTLY in o.get("data", {})]
    return len(outs), sum("image/png" in o["data"] for o in outs)


def browser() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def screenshot(html: Path, png: Path, height: int = 9000) -> None:
    subprocess.run([browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-background-networking", "--disable-component-update", "--no-first-run",
                    f"--screenshot={png}", f"--window-size=1100,{height}", html.as_uri()],
                   check=True, capture_output=True, timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", help="course notebook names, e.g. 01_triplanes")
    ap.add_argument("--out", required=True, type=Path, help="folder for the executed notebooks, HTML and PNGs")
    ap.add_argument("--full", action="store_true", help="full mode (C3D_FAST=0) instead of fast mode")
    ap.add_argument("--no-screenshot", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "C3D_FAST": "0" if args.full else "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="c3d_html_") as elsewhere:  # a copy, as on Colab
        for name in args.notebooks:
            src = ROOT / "notebooks" / f"{name}.ipynb"
            if not src.exists():
                print(f"{src}: no such notebook", file=sys.stderr)
                return 2
            copy = Path(elsewhere) / src.name
            shutil.copy(src, copy)
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                            "--ExecutePreprocessor.timeout=-1", "--output-dir", str(args.out), str(copy)],
                           check=True, capture_output=True, env=env, cwd=elsewhere)
            seconds = time.time() - t0
            executed = args.out / src.name
            subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--output-dir",
                            str(args.out), str(executed)], check=True, capture_output=True)
            html = executed.with_suffix(".html")
            figures, with_png = figure_counts(executed)
            shot = ""
            if not args.no_screenshot and browser():
                png = executed.with_suffix(".png")
                screenshot(html, png)
                shot = str(png)
            print(f"{name}: executed in {seconds:.0f} s | {figures} figures, {with_png} with a PNG | "
                  f"HTML {html.stat().st_size / 1e6:.1f} MB | {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
