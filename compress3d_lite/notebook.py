"""What every course notebook does first, in one call after the setup cell's install check:

    FAST, device = start()

* reads fast mode (``config.fast_mode``: small sizes on a CPU, ``C3D_FAST`` forces it) and the device;
* seeds torch, so a notebook run top to bottom gives the same numbers again;
* in fast mode on a CPU uses one thread: the course's models are small, and two threads on a busy
  2-core machine wait on each other (we measured 3-30x slower steps);
* makes figures render anywhere (``viz.static``): interactive with a kernel, a PNG without;
* prints one line saying all of this, and on a Colab session without a GPU how to get one.

``your_turn`` runs the check of a "your turn" cell: a short function the learner writes, compared
with the library's.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from . import __version__
from .config import fast_mode, pick_device
from .viz.static import use_static_figures


def start(seed: int = 0) -> tuple[bool, str]:
    """Set up a notebook; returns ``(fast, device)``."""
    fast, device = fast_mode(), pick_device()
    torch.manual_seed(seed)
    if fast and device == "cpu":
        torch.set_num_threads(1)
    static = use_static_figures()
    print(f"compress3d_lite {__version__} | device {device} | fast mode {fast} | "
          f"figures {'interactive + PNG' if static else 'interactive'}")
    if "google.colab" in sys.modules and device == "cpu":
        print("No GPU in this Colab session: Runtime > Change runtime type > T4 GPU gives full-size runs.")
    return fast, device


def your_turn(check: Callable[[], object], solution: str) -> bool:
    """Run the check of a "your turn" cell. While the learner's function still raises
    ``NotImplementedError`` it prints where to start and where the worked solution is; when the
    check passes it says so; a wrong answer fails loudly with the check's own assertion."""
    try:
        check()
    except NotImplementedError:
        print(f"Your turn: fill in the function above and run this cell again (worked solution: {solution}).")
        return False
    print("Correct: your function agrees with the library.")
    return True
