"""Drawing helpers run headless and draw what they are given."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mrcnn_lite.data import ShapesDataset  # noqa: E402
from mrcnn_lite.viz import PALETTE, class_color, draw_grid, draw_instances  # noqa: E402


@pytest.fixture(scope="module")
def sample():
    ds = ShapesDataset(20, image_size=64, seed=5, min_shapes=3, max_shapes=4)
    return next(ds[i] for i in range(20) if len(ds[i][1]["labels"]) >= 2)


def test_viz_init_is_light():
    """viz/__init__ imports only the drawing helpers, never the ipywidgets explorers."""
    import ast
    import importlib.util
    tree = ast.parse(open(importlib.util.find_spec("mrcnn_lite.viz").origin).read())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported == ["draw"]


def test_palette_is_stable():
    assert class_color(1) == class_color(1 + len(PALETTE))
    assert len({class_color(k) for k in range(1, 4)}) == 3


def test_draw_ground_truth(sample):
    image, t = sample
    ax = draw_instances(image, t["boxes"], t["labels"], masks=t["masks"],
                        class_names=ShapesDataset.class_names)
    n = len(t["labels"])
    assert isinstance(ax, matplotlib.axes.Axes)
    assert len(ax.patches) == n
    texts = [tx.get_text() for tx in ax.texts]
    assert len(texts) == n and set(texts) <= {"circle", "square", "triangle"}
    # the masks were blended in: the drawn image differs from the input inside masks
    drawn = ax.images[0].get_array()
    assert not np.allclose(drawn, image.permute(1, 2, 0).numpy())
    plt.close(ax.figure)


def test_draw_predictions_with_scores(sample):
    image, t = sample
    n = len(t["labels"])
    scores = torch.linspace(0.9, 0.1, n)
    probs = t["masks"][:, None].float() * 0.8  # (n, 1, H, W) probabilities, like model output
    fig, ax = plt.subplots()
    out = draw_instances(image, t["boxes"], t["labels"], scores, probs, ax=ax, score_thresh=0.5)
    assert out is ax
    kept = int((scores >= 0.5).sum())
    assert len(ax.patches) == kept and len(ax.texts) == kept
    assert all(any(c.isdigit() for c in tx.get_text()) for tx in ax.texts)
    plt.close(fig)


def test_draw_image_only_and_uint8():
    img = np.zeros((16, 20, 3), dtype=np.uint8)
    ax = draw_instances(img)
    assert len(ax.patches) == 0 and ax.images[0].get_array().shape == (16, 20, 3)
    plt.close(ax.figure)


def test_draw_grid(sample):
    ds = ShapesDataset(7, image_size=48, seed=1)
    fig = draw_grid(ds, n=5, cols=3)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 6  # 2 rows x 3 cols, the last one blank
    drawn = sum(len(a.patches) for a in fig.axes)
    assert drawn == sum(len(ds[i][1]["labels"]) for i in range(5))
    plt.close(fig)
    fig = draw_grid([sample], n=1)
    assert len(fig.axes) == 1
    plt.close(fig)
