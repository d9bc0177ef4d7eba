"""Reading an image file into the (H, W, 3) uint8 RGB array every dataset here starts from.

One function, used by the COCO loader, Penn-Fudan and the ``predict`` command, so that all three
read a file the same way:

* the EXIF orientation tag is applied (a phone photo taken upright comes out upright, as every
  image viewer shows it);
* 16-bit images (PNG ``I;16``) are scaled to 8 bits (65535 -> 255) instead of being clipped, which
  turns almost every pixel white;
* a file PIL cannot decode (zero bytes, truncated, not an image) raises ``ImageReadError`` naming the
  file (and the image id when the caller knows it), not PIL's ``OSError`` without a name.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded (empty, truncated, not an image)."""


def read_rgb(path, image_id=None) -> np.ndarray:
    """Read ``path`` as an (H, W, 3) uint8 RGB array, upright (EXIF orientation applied).

    Raises FileNotFoundError (no such file) or ImageReadError (a ValueError) naming the file and,
    when given, ``image_id``.
    """
    path = Path(path)
    where = f"image id {image_id} ({path})" if image_id is not None else str(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file for {where} not found" if image_id is not None
                                else f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            # PIL warns (not raises) on some broken EXIF blocks; the pixels are still fine
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, inside the try
                im = ImageOps.exif_transpose(im)
                return _to_rgb_u8(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # OSError covers PIL's UnidentifiedImageError and "image file is truncated"
        raise ImageReadError(f"cannot read {where}: {err}") from err


def _to_rgb_u8(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (PIL opens some as 32-bit "I"): scale the 0..65535 range to 0..255.
        # convert("RGB") would clip every value above 255 to white.
        gray = np.asarray(im, dtype=np.float64)
        u8 = np.clip(np.rint(gray / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(u8[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise ValueError("32-bit float images are not supported: save it as 8- or 16-bit")
    return np.array(im.convert("RGB"))  # a writable copy
