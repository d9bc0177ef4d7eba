"""ipywidgets explorers. Each keeps its update logic in a plain function that tests call headless."""
from .anchor_explorer import AnchorExplorer
from .prediction_explorer import PredictionExplorer, prediction_view
from .roi_explorer import RoIAlignExplorer

__all__ = ["AnchorExplorer", "RoIAlignExplorer", "PredictionExplorer", "prediction_view"]
