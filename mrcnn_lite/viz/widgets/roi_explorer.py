"""RoIAlignExplorer: move and resize a box on a feature map and watch RoIAlign sample and pool it.

The logic lives in :func:`roi_align_view`, a plain function (tests call it headless); the widget
only draws its result. ipywidgets is imported when the widget is first shown, so importing this
module needs no notebook frontend.

Coordinates: the drawing uses the kernel's own coordinates, where the value of feature cell
``(i, j)`` sits at the point ``(y, x) = (i, j)``. So cell ``(i, j)`` is drawn as the unit square
centred there, and with ``aligned=True`` the box appears shifted by half a cell (that shift is
exactly what ``aligned`` does).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from ...ops.roi_ops import roi_align, roi_align_geometry, roi_align_sample_positions


def _as_chw(feature) -> torch.Tensor:
    """``(H, W)``, ``(C, H, W)`` or ``(H, W, 3|4)`` image -> float64 ``(C, H, W)`` tensor."""
    t = torch.as_tensor(np.asarray(feature) if not isinstance(feature, torch.Tensor) else feature)
    t = t.detach().to("cpu", torch.float64)
    if t.dim() == 2:
        return t[None]
    if t.dim() == 3 and t.shape[-1] in (3, 4) and t.shape[0] not in (1, 3, 4):
        return t.permute(2, 0, 1)  # channels-last image
    if t.dim() == 3:
        return t
    raise ValueError(f"feature must be (H, W), (C, H, W) or (H, W, 3), got shape {tuple(t.shape)}")


def roi_align_view(feature, box: Sequence[float], output_size=2, sampling_ratio: int = 2,
                   aligned: bool = False, spatial_scale: float = 1.0) -> Dict[str, Any]:
    """Everything RoIAlign does for one box, as numbers to draw.

    Args:
        feature: ``(H, W)`` map, ``(C, H, W)`` maps, or an ``(H, W, 3)`` image.
        box: ``(x1, y1, x2, y2)`` in the coordinates that ``spatial_scale`` maps to the feature.
        output_size, sampling_ratio, aligned, spatial_scale: as in ``mrcnn_lite.ops.roi_align``.

    Returns a dict with
        ``pooled``: ``(PH, PW)`` (or ``(C, PH, PW)`` for several channels), equal to ``roi_align``;
        ``sample_x``, ``sample_y``: ``(PH, PW, gh, gw)`` sample coordinates (kernel coordinates);
        ``sample_valid``: same shape, False where the sample lies outside ``[-1, H] x [-1, W]``
        (it then contributes 0 but still counts in the average);
        ``bin_edges_x`` ``(PW + 1,)``, ``bin_edges_y`` ``(PH + 1,)``: bin boundaries;
        ``roi``: ``(x_start, y_start, x_end, y_end)`` after the aligned shift and the >= 1 clamp;
        ``grid``: ``(gh, gw)`` samples per bin; ``count``: the divisor of the average.
    """
    fmap = _as_chw(feature)
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    _, h, w = fmap.shape
    rois = torch.tensor([[0.0, *[float(v) for v in box]]], dtype=torch.float64)
    pooled = roi_align(fmap[None], rois, (ph, pw), spatial_scale, int(sampling_ratio), bool(aligned))[0]

    geo = roi_align_geometry(rois, (ph, pw), spatial_scale, int(sampling_ratio), bool(aligned))
    gh, gw = int(geo["grid_h"][0]), int(geo["grid_w"][0])
    ys, _ = roi_align_sample_positions(geo["y_start"], geo["bin_h"], geo["grid_h"], ph, max(gh, 0))
    xs, _ = roi_align_sample_positions(geo["x_start"], geo["bin_w"], geo["grid_w"], pw, max(gw, 0))
    ys, xs = ys[0], xs[0]                                              # (PH, gh), (PW, gw)
    sample_y = ys[:, None, :, None].expand(ph, pw, max(gh, 0), max(gw, 0))
    sample_x = xs[None, :, None, :].expand(ph, pw, max(gh, 0), max(gw, 0))
    valid = (sample_y >= -1) & (sample_y <= h) & (sample_x >= -1) & (sample_x <= w)

    y0, x0 = float(geo["y_start"][0]), float(geo["x_start"][0])
    bh, bw = float(geo["bin_h"][0]), float(geo["bin_w"][0])
    return {
        "pooled": (pooled[0] if pooled.shape[0] == 1 else pooled).numpy(),
        "sample_x": sample_x.numpy().copy(),
        "sample_y": sample_y.numpy().copy(),
        "sample_valid": valid.numpy(),
        "bin_edges_x": x0 + bw * np.arange(pw + 1),
        "bin_edges_y": y0 + bh * np.arange(ph + 1),
        "roi": (x0, y0, x0 + bw * pw, y0 + bh * ph),
        "grid": (gh, gw),
        "count": max(gh * gw, 1),
        "feature_shape": (h, w),
    }


class RoIAlignExplorer:
    """Interactive RoIAlign: sliders for the box (x1, y1, w, h), output size, sampling ratio, aligned.

    >>> ex = RoIAlignExplorer(torch.rand(12, 16))          # a feature map, or an (H, W, 3) image
    >>> view = ex.update(x1=2.3, w=6.5, sampling_ratio=-1)  # headless: recompute and redraw
    >>> ex                                                  # in a notebook: shows sliders + figure

    ``update(**values)`` changes any of ``x1, y1, w, h, output_size, sampling_ratio, aligned`` and
    returns the :func:`roi_align_view` dict; ``.fig`` is the matplotlib figure it draws on.
    """

    PARAMS = ("x1", "y1", "w", "h", "output_size", "sampling_ratio", "aligned")

    def __init__(self, feature, x1: float = 2.3, y1: float = 1.6, w: float = 7.4, h: float = 5.8,
                 output_size: int = 2, sampling_ratio: int = 2, aligned: bool = False,
                 annotate: Optional[bool] = None):
        self.feature = _as_chw(feature)
        self.values = dict(x1=float(x1), y1=float(y1), w=float(w), h=float(h), output_size=int(output_size),
                           sampling_ratio=int(sampling_ratio), aligned=bool(aligned))
        _, fh, fw = self.feature.shape
        self.annotate = annotate if annotate is not None else fh * fw <= 24 * 24
        self.fig = None
        self.view: Dict[str, Any] = {}
        self._ui = None
        self._out = None

    # ---------------------------------------------------------------- logic
    def box(self):
        v = self.values
        return (v["x1"], v["y1"], v["x1"] + v["w"], v["y1"] + v["h"])

    def update(self, **values) -> Dict[str, Any]:
        unknown = set(values) - set(self.PARAMS)
        if unknown:
            raise TypeError(f"RoIAlignExplorer.update: unknown parameter(s) {sorted(unknown)}; use {self.PARAMS}")
        self.values.update(values)
        v = self.values
        self.view = roi_align_view(self.feature, self.box(), v["output_size"], v["sampling_ratio"], v["aligned"])
        self._draw()
        return self.view

    # ---------------------------------------------------------------- drawing
    def _draw(self) -> None:
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        if self.fig is None:
            self.fig, _ = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
            plt.close(self.fig)  # we display it ourselves; keeps inline backends from double-drawing
        ax, ax_out = self.fig.axes
        ax.clear()
        ax_out.clear()
        view, fmap = self.view, self.feature
        _, h, w = fmap.shape
        img = fmap[0].numpy() if fmap.shape[0] != 3 else _to_rgb(fmap)
        ax.imshow(img, cmap="viridis", extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
        if self.annotate and fmap.shape[0] == 1:
            for i in range(h):
                for j in range(w):
                    ax.text(j, i, f"{img[i, j]:.1f}", ha="center", va="center", fontsize=6, color="w")
        # feature-cell boundaries
        for t in np.arange(-0.5, w, 1.0):
            ax.axvline(t, color="k", lw=0.3, alpha=0.4)
        for t in np.arange(-0.5, h, 1.0):
            ax.axhline(t, color="k", lw=0.3, alpha=0.4)
        x0, y0, x1, y1 = view["roi"]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="r", lw=2))
        for e in view["bin_edges_x"][1:-1]:
            ax.plot([e, e], [y0, y1], color="r", lw=1, ls="--")
        for e in view["bin_edges_y"][1:-1]:
            ax.plot([x0, x1], [e, e], color="r", lw=1, ls="--")
        sx, sy, ok = view["sample_x"], view["sample_y"], view["sample_valid"]
        ax.scatter(sx[ok], sy[ok], s=14, c="w", edgecolors="k", zorder=3, label="sample (bilinear)")
        if (~ok).any():
            ax.scatter(sx[~ok], sy[~ok], s=18, c="r", marker="x", zorder=3, label="outside: counts as 0")
        ax.set_xlim(min(-1.5, x0 - 1), max(w + 0.5, x1 + 1))
        ax.set_ylim(max(h + 0.5, y1 + 1), min(-1.5, y0 - 1))
        gh, gw = view["grid"]
        v = self.values
        ax.set_title(f"box ({v['x1']:.1f}, {v['y1']:.1f}, w={v['w']:.1f}, h={v['h']:.1f})  "
                     f"grid {gh}x{gw} per bin, aligned={v['aligned']}", fontsize=9)
        ax.legend(loc="lower right", fontsize=7)

        pooled = view["pooled"]
        shown = pooled if pooled.ndim == 2 else _to_rgb(torch.as_tensor(pooled))
        ax_out.imshow(shown, cmap="viridis", interpolation="nearest")
        if pooled.ndim == 2 and pooled.size <= 100:
            for (i, j), val in np.ndenumerate(pooled):
                ax_out.text(j, i, f"{val:.2f}", ha="center", va="center", fontsize=8, color="w")
        ax_out.set_title(f"RoIAlign output {pooled.shape[-2]}x{pooled.shape[-1]}", fontsize=9)
        ax_out.set_xticks([])
        ax_out.set_yticks([])
        if self._out is not None:
            from IPython.display import display

            with self._out:
                self._out.clear_output(wait=True)
                display(self.fig)

    # ---------------------------------------------------------------- widgets (built lazily)
    def widget(self):
        """The ipywidgets UI (sliders + figure); built on first use."""
        if self._ui is not None:
            return self._ui
        import ipywidgets as W

        _, h, w = self.feature.shape
        v = self.values
        fl = dict(step=0.1, continuous_update=False, readout_format=".1f")
        sliders = {
            "x1": W.FloatSlider(value=v["x1"], min=-2.0, max=float(w), description="x1", **fl),
            "y1": W.FloatSlider(value=v["y1"], min=-2.0, max=float(h), description="y1", **fl),
            "w": W.FloatSlider(value=v["w"], min=0.1, max=float(w) + 2, description="w", **fl),
            "h": W.FloatSlider(value=v["h"], min=0.1, max=float(h) + 2, description="h", **fl),
            "output_size": W.IntSlider(value=v["output_size"], min=1, max=8, description="output",
                                       continuous_update=False),
            "sampling_ratio": W.IntSlider(value=v["sampling_ratio"], min=-1, max=6,
                                          description="sampling", continuous_update=False),
            "aligned": W.Checkbox(value=v["aligned"], description="aligned"),
        }
        self._out = W.Output()

        def on_change(change, name):
            self.update(**{name: change["new"]})

        for name, s in sliders.items():
            s.observe(lambda ch, n=name: on_change(ch, n), names="value")
        self.sliders = sliders
        controls = W.VBox([W.HBox([sliders["x1"], sliders["y1"]]), W.HBox([sliders["w"], sliders["h"]]),
                           W.HBox([sliders["output_size"], sliders["sampling_ratio"], sliders["aligned"]])])
        self._ui = W.VBox([controls, self._out])
        self.update()
        return self._ui

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget())


def _to_rgb(chw: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` -> ``(H, W, 3)`` scaled into [0, 1] for imshow."""
    a = chw[:3].permute(1, 2, 0).numpy().astype(np.float64)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
