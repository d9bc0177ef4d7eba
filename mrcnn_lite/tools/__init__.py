"""Tools around the model, not part of it: ``bench`` (side-by-side speed against torchvision)."""
