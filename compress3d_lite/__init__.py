"""compress3d_lite: a teachable re-implementation of Compress3D (arXiv 2403.13524).

One image in, one coloured 3D mesh out, through a compressed triplane latent space.
See README.md for the notebook map, docs/paper.md for the method and docs/design.md for the layout.
"""

__version__ = "0.1.0"

from .config import fast_mode, pick_device  # noqa: E402,F401
