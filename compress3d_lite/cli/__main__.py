"""``python -m compress3d_lite.cli ...`` (what ``accelerate launch -m compress3d_lite.cli`` runs)."""

import sys

from . import main

sys.exit(main())
