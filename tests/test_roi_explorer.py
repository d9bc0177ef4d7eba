"""RoIAlignExplorer, headless: its numbers equal mrcnn_lite.ops.roi_align, and update() redraws."""
from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mrcnn_lite.ops import roi_align  # noqa: E402
from mrcnn_lite.viz.widgets import RoIAlignExplorer  # noqa: E402
from mrcnn_lite.viz.widgets.roi_explorer import roi_align_view  # noqa: E402


@pytest.fixture
def fmap():
    return torch.rand(9, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sr", [-1, 1, 3])
@pytest.mark.parametrize("box", [(2.3, 1.6, 9.7, 7.4), (-1.5, -0.8, 3.0, 2.5), (4.1, 4.2, 4.3, 4.25)])
def test_view_equals_roi_align(fmap, box, sr, aligned):
    view = roi_align_view(fmap, box, (2, 3), sr, aligned)
    expected = roi_align(fmap[None, None], torch.tensor([[0.0, *box]], dtype=torch.float64), (2, 3), 1.0, sr, aligned)
    np.testing.assert_array_equal(view["pooled"], expected[0, 0].numpy())
    assert view["bin_edges_x"].shape == (4,) and view["bin_edges_y"].shape == (3,)


def test_samples_reproduce_the_pooled_values(fmap):
    """Average the bilinear value at the view's sample points -> the pooled output (all inside)."""
    view = roi_align_view(fmap, (2.3, 1.6, 9.7, 7.4), 2, 2, True)
    f = fmap.numpy()

    def bilinear(y, x):
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        ly, lx = y - y0, x - x0
        return ((1 - ly) * (1 - lx) * f[y0, x0] + (1 - ly) * lx * f[y0, x0 + 1]
                + ly * (1 - lx) * f[y0 + 1, x0] + ly * lx * f[y0 + 1, x0 + 1])

    sy, sx = view["sample_y"], view["sample_x"]
    assert sy.shape == (2, 2, 2, 2) and view["sample_valid"].all()
    means = np.vectorize(bilinear)(sy, sx).mean(axis=(2, 3))
    np.testing.assert_allclose(means, view["pooled"], rtol=0, atol=1e-12)
    # samples sit strictly inside their bins
    ex, ey = view["bin_edges_x"], view["bin_edges_y"]
    for q in range(2):
        assert ((sx[:, q] > ex[q]) & (sx[:, q] < ex[q + 1])).all()
        assert ((sy[q] > ey[q]) & (sy[q] < ey[q + 1])).all()


def test_adaptive_grid_and_outside_samples(fmap):
    view = roi_align_view(fmap, (-3.0, 0.0, 4.0, 8.0), 2, -1, False)
    assert view["grid"] == (4, 4) and view["count"] == 16  # ceil(8 / 2) by ceil(7 / 2)
    assert not view["sample_valid"].all()  # x < -1 on the left: contributes zero
    assert view["sample_x"][~view["sample_valid"]].max() < -1


def test_rgb_image_pools_each_channel():
    img = np.random.default_rng(0).random((10, 14, 3))
    view = roi_align_view(img, (1, 1, 9, 8), 3, 2)
    assert view["pooled"].shape == (3, 3, 3)
    chw = torch.as_tensor(img).permute(2, 0, 1)[None]
    np.testing.assert_allclose(view["pooled"], roi_align(chw, [torch.tensor([[1.0, 1, 9, 8], ]).double()], 3, 1.0, 2)[0].numpy())


def test_explorer_update_headless(fmap):
    ex = RoIAlignExplorer(fmap)
    view = ex.update(x1=1.0, y1=2.0, w=5.5, h=4.0, output_size=3, sampling_ratio=-1, aligned=True)
    np.testing.assert_array_equal(view["pooled"], roi_align_view(fmap, (1.0, 2.0, 6.5, 6.0), 3, -1, True)["pooled"])
    assert ex.fig is not None and len(ex.fig.axes) == 2
    ax = ex.fig.axes[0]
    assert len(ax.collections) >= 1  # the sample points were drawn
    view2 = ex.update(x1=-2.0)  # partly outside: the outside samples get their own marker
    assert not view2["sample_valid"].all()
    with pytest.raises(TypeError, match="unknown parameter"):
        ex.update(colour="red")


def test_widget_builds_when_ipywidgets_is_present(fmap):
    pytest.importorskip("ipywidgets")
    ex = RoIAlignExplorer(fmap, output_size=2)
    ui = ex.widget()
    assert ex.widget() is ui  # built once
    ex.sliders["output_size"].value = 4  # a slider change calls update()
    assert ex.view["pooled"].shape == (4, 4)
