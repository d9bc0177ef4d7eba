"""Masks <-> COCO segmentations: RLE and polygons, written and read, checked before pycocotools sees them.

A COCO segmentation is either a list of polygons ``[[x1, y1, x2, y2, ...], ...]`` (pixel-corner
coordinates) or a run-length encoding (RLE) ``{"size": [h, w], "counts": ...}``, where counts is a list
of ints ("uncompressed", used for crowds) or pycocotools' compact string ("compressed"). pycocotools
turns all three into a binary mask, and trusts its input: :func:`check_segmentation` is what stands
between a bad file and memory pycocotools never filled.
"""
from __future__ import annotations

import warnings

import numpy as np
from pycocotools import mask as mask_utils


def mask_to_rle(mask) -> dict:
    """(H, W) binary mask -> compressed COCO RLE ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8))  # pycocotools wants column-major uint8
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON; the string is plain ASCII
    return rle


def crop_to_rle(crop, x0: int, y0: int, height: int, width: int) -> dict:
    """COCO RLE (as :func:`mask_to_rle`) of a ``height x width`` mask that is 0 except for ``crop``.

    crop: (h, w) binary, its top-left at pixel (x0, y0), inside the image (``model.transform.mask_format
    = "compact"`` gives such crops). Only the columns the crop spans are built: RLE runs go down each
    column in turn (column-major), so the columns left and right of the crop are one run of zeros each.
    """
    crop = np.asarray(crop, dtype=bool)
    h, w = crop.shape
    if w == 0 or h == 0:
        return _rle_from_runs([height * width], height, width)   # an empty mask: one run of zeros
    if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        raise ValueError(f"a {h}x{w} crop at ({x0}, {y0}) does not fit a {height}x{width} (HxW) image")
    columns = np.zeros((height, w), dtype=bool)
    columns[y0: y0 + h] = crop
    flat = columns.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    if flat[0]:
        runs.insert(0, 0)       # RLE starts with a run of zeros, possibly empty
    runs[0] += x0 * height      # the all-zero columns left of the crop
    after = (width - x0 - w) * height
    if len(runs) % 2:           # the last run is zeros: the columns right of the crop extend it
        runs[-1] += after
    elif after:
        runs.append(after)
    return _rle_from_runs(runs, height, width)


def _rle_from_runs(runs: list, height: int, width: int) -> dict:
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_to_polygons(mask) -> list:
    """(H, W) binary mask -> list of polygons ``[[x1, y1, x2, y2, ...], ...]`` along pixel edges.

    We walk the outline of the mask along the cracks between pixels, so the vertices sit on pixel
    corners (integers). Each connected region gives one outer polygon. COCO polygons are a union,
    so *holes cannot be expressed*: a region with a hole comes back filled.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)  # a frame of zeros: every region has an outside
    inside = m[1:-1, 1:-1]
    rows, cols = np.nonzero(inside)
    # Directed boundary edges, clockwise on screen (y points down) around each foreground pixel.
    # Pixel (r, c) covers [c, c+1] x [r, r+1]; an edge is on the outline when the neighbour is out.
    edges = []
    for (dr, dc), (x0, y0, x1, y1) in (
        ((-1, 0), (0, 0, 1, 0)),  # top edge, heading right
        ((0, 1), (1, 0, 1, 1)),   # right edge, heading down
        ((1, 0), (1, 1, 0, 1)),   # bottom edge, heading left
        ((0, -1), (0, 1, 0, 0)),  # left edge, heading up
    ):
        out = ~m[rows + 1 + dr, cols + 1 + dc]
        for r, c in zip(rows[out].tolist(), cols[out].tolist()):
            edges.append(((c + x0, r + y0), (c + x1, r + y1)))
    starts = {}
    for e in edges:
        starts.setdefault(e[0], []).append(e[1])

    polygons = []
    while starts:
        # start where there is only one way on, so the turn rule below decides every fork
        start = next((v for v, o in starts.items() if len(o) == 1), next(iter(starts)))
        loop, here, heading = [start], start, None
        while True:
            options = starts[here]
            if len(options) == 1 or heading is None:
                nxt = options[0]
            else:
                # two ways on (pixels touching only at a corner): turn right, hugging the current
                # pixel, so diagonal neighbours stay separate regions
                right = (-heading[1], heading[0])
                nxt = next((o for o in options if (o[0] - here[0], o[1] - here[1]) == right),
                           options[0])
            options.remove(nxt)
            if not options:
                del starts[here]
            heading = (nxt[0] - here[0], nxt[1] - here[1])
            here = nxt
            if here == start:  # back where we began: the outline is closed
                break
            loop.append(here)
        # drop vertices in the middle of straight runs
        pts = np.array(loop, dtype=np.float64)
        prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
        cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - \
                (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
        pts = pts[cross != 0]
        # shoelace with y down: outer outlines (clockwise on screen) are positive, holes negative
        x, y = pts[:, 0], pts[:, 1]
        signed = np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
        if signed > 0 and len(pts) >= 3:
            polygons.append(pts.reshape(-1).tolist())
    return polygons


def _rle_string_counts(counts: str, where: str) -> list:
    """Decode pycocotools' compact RLE string to its list of run lengths (``rleFrString`` in Python).

    Each run is a variable-length number of 6-bit characters ('0' + value); from the third run on
    it is stored as the difference to the run two before. Checking the decoded runs here, before
    pycocotools sees the string, is what keeps a bad string from reading memory it never filled.
    """
    if not counts.isascii():
        raise ValueError(f"{where}: compressed RLE counts must be ASCII")
    s = counts.encode("ascii")
    runs, p, n = [], 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError(f"{where}: compressed RLE counts end in the middle of a number")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"{where}: character {chr(s[p])!r} cannot appear in compressed "
                                 f"RLE counts (they use '0'..'o')")
            x |= (c & 0x1F) << (5 * k)
            more = c & 0x20
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # the sign bit of the last group: a negative difference
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _check_runs(runs, height: int, width: int, where: str, kind: str) -> None:
    if any(r < 0 for r in runs):
        raise ValueError(f"{where}: {kind} RLE has a negative run length")
    if sum(runs) != height * width:
        raise ValueError(f"{where}: {kind} RLE counts sum to {sum(runs)}, expected "
                         f"height*width = {height}*{width} = {height * width}")


def is_number(v) -> bool:
    """A JSON number: an int or a float, not a bool (which Python counts as an int)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_segmentation(seg, height: int, width: int, where: str) -> None:
    """Validate one COCO segmentation for an image of ``height`` x ``width`` *before* decoding it.

    pycocotools trusts its input: a polygon vertex at 1e9 (or NaN, or Infinity, which Python's json
    accepts) makes it allocate without bound, and compressed RLE counts that sum to less than
    H*W leave part of the mask uninitialised. So: polygons are flat lists of an even number >= 6 of
    finite coordinates, each within one image size of the image (a little outside is common in
    real annotations and harmless); RLE has ``size == [height, width]`` and non-negative runs that
    sum to exactly ``height * width``, compressed (ASCII string) or not (list of ints).
    Raises ValueError starting with ``where`` (e.g. "annotation id 7 (image id 3)").
    """
    if isinstance(seg, list):
        if len(seg) == 0:
            raise ValueError(f"{where}: empty polygon list")
        margin = max(height, width)
        for poly in seg:
            if not isinstance(poly, (list, tuple)) or not all(is_number(v) for v in poly):
                raise ValueError(f"{where}: a polygon must be a flat list of numbers "
                                 f"[x1, y1, x2, y2, ...], got {str(poly)[:60]}")
            if len(poly) < 6 or len(poly) % 2:
                raise ValueError(f"{where}: a polygon needs an even number >= 6 of coordinates "
                                 f"(3 points), got {len(poly)}")
            xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
            if not np.isfinite(xy).all():
                raise ValueError(f"{where}: a polygon has a non-finite coordinate (NaN or Infinity)")
            lo, hi = xy.min(axis=0), xy.max(axis=0)
            if lo[0] < -margin or lo[1] < -margin or hi[0] > width + margin or hi[1] > height + margin:
                raise ValueError(f"{where}: a polygon reaches ({lo[0]:g}, {lo[1]:g})-({hi[0]:g}, "
                                 f"{hi[1]:g}), far outside the {width}x{height} (WxH) image")
    elif isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            raise ValueError(f"{where}: an RLE segmentation needs 'size' and 'counts'")
        size = seg["size"]
        if not isinstance(size, (list, tuple)) or list(size) != [height, width]:
            raise ValueError(f"{where}: RLE size {size} does not match the image "
                             f"size [height, width] = [{height}, {width}]")
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed RLE (crowds): runs of 0s and 1s, column-major
            if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
                raise ValueError(f"{where}: uncompressed RLE counts must be integers")
            _check_runs(counts, height, width, where, "uncompressed")
        elif isinstance(counts, str):
            _check_runs(_rle_string_counts(counts, where), height, width, where, "compressed")
        else:
            raise ValueError(f"{where}: RLE counts must be a list or a string, "
                             f"got {type(counts).__name__}")
    else:
        raise ValueError(f"{where}: segmentation must be a list of polygons or an RLE dict, "
                         f"got {type(seg).__name__}")


def segmentation_to_mask(seg, height: int, width: int, where: str) -> np.ndarray:
    """Decode one COCO segmentation (polygons, uncompressed or compressed RLE) to (H, W) uint8.

    The segmentation is validated first (:func:`check_segmentation`); raises ValueError starting with
    ``where`` (e.g. "annotation id 7 (image id 3)") when it is malformed.
    """
    check_segmentation(seg, height, width, where)
    if isinstance(seg, list):
        rles = mask_utils.frPyObjects([list(map(float, p)) for p in seg], height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = {"size": [height, width], "counts": seg["counts"].encode("ascii")}
    try:
        with warnings.catch_warnings():  # pycocotools + numpy 2 warn about __array__(copy=...)
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode(rle)
    except Exception as err:  # pycocotools' own message does not say which annotation
        raise ValueError(f"{where}: could not decode the segmentation ({err})") from err
    if m.shape != (height, width):
        raise ValueError(f"{where}: decoded mask has shape {m.shape}, "
                         f"expected ({height}, {width})")
    return m.astype(np.uint8)
