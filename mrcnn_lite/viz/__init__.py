"""mrcnn_lite.viz: matplotlib drawing helpers (``draw``) and ipywidgets explorers (``widgets``).

Only the drawing helpers are imported here, so ``import mrcnn_lite.viz`` stays light;
the widgets live in ``mrcnn_lite.viz.widgets``.
"""
from .draw import PALETTE, class_color, draw_grid, draw_instances

__all__ = ["PALETTE", "class_color", "draw_grid", "draw_instances"]
