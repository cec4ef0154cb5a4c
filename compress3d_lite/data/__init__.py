"""Data: toy shapes, coloured point + occupancy sampling, renderer, real-mesh import, datasets.

Knows nothing of models or training (docs/design.md §1).
"""

from .io import DataFormatError, load_object, read_index, save_object  # noqa: F401
from .toyshapes import CATEGORIES, ToyObject, make_toy_object, object_rng, toy_example  # noqa: F401
