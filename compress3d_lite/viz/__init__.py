"""Plotly viewers (docs/design.md §5): every function returns a plain ``go.Figure`` that shows in
JupyterLab, Colab and VS Code and saves as standalone HTML (``save_html``).

* ``figures``: meshes, coloured points, occupancy, slices, saving;
* ``images``: image grids (renders, depth maps);
* ``triplanes``: PCA colour images of triplanes, the decoded-triplane explorer and the
  denoising-steps figure.
"""

from .figures import (
    EYE,
    INSIDE_COLOR,
    MESH_LIGHTING,
    colored_mesh_figure,
    colored_mesh_trace,
    compare_meshes,
    interactive_views,
    mesh_figure,
    mesh_steps_figure,
    mesh_trace,
    object_figure,
    occupancy_figure,
    occupancy_slices,
    occupancy_traces,
    points_figure,
    points_trace,
    rgb_strings,
    save_html,
    trimesh_trace,
)
from .images import image_grid
from .triplanes import (
    PLANE_VIEWS,
    denoising_figure,
    pca_basis,
    pca_rgb,
    plane_image,
    triplane_explorer,
    triplane_rgb,
)

__all__ = [
    "EYE", "INSIDE_COLOR", "MESH_LIGHTING", "PLANE_VIEWS", "colored_mesh_figure", "colored_mesh_trace",
    "compare_meshes", "denoising_figure", "image_grid", "interactive_views", "mesh_figure", "mesh_steps_figure",
    "mesh_trace", "object_figure", "occupancy_figure", "occupancy_slices", "occupancy_traces", "pca_basis",
    "pca_rgb", "plane_image", "points_figure", "points_trace", "rgb_strings", "save_html", "triplane_explorer",
    "triplane_rgb", "trimesh_trace",
]
