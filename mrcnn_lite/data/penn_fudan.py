"""Penn-Fudan pedestrians (170 images, 345 people): a small real dataset in our contract.

The archive ``PennFudanPed.zip`` (about 50 MB) is published at
https://www.cis.upenn.edu/~jshi/ped_html/ and unzips to::

    PennFudanPed/PNGImages/FudanPed00001.png ...
    PennFudanPed/PedMasks/FudanPed00001_mask.png ...   # 0 = background, 1..k = person k

Every person becomes one instance with label 1 ("person").

    ds = download_penn_fudan("data")     # fetches, checks and unzips once; then data/PennFudanPed is reused
    ds = PennFudan("data/PennFudanPed")  # a folder you unzipped yourself

The site publishes no checksum, so :func:`download_penn_fudan` checks what it can without one: the
archive is a valid zip whose members pass their CRC-32 checks, it has 170 images in ``PNGImages/``
and one ``<name>_mask.png`` in ``PedMasks/`` for each, and no member escapes the folder.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from ..downloads import DownloadError
from .images import ImageReadError, read_rgb
from .shapes import image_to_tensor, masks_to_boxes


class PennFudan(torch.utils.data.Dataset):
    """``PennFudan("data/PennFudanPed")[i] -> (image, target)`` like ShapesDataset; label 1 = person."""

    class_names = ("__background__", "person")

    def __init__(self, root, transforms=None):
        self.root = Path(root)
        self.transforms = transforms
        img_dir, mask_dir = self.root / "PNGImages", self.root / "PedMasks"
        for d in (img_dir, mask_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"Penn-Fudan folder not found: {d}")
        self.images = sorted(img_dir.glob("*.png"))
        self.masks = [mask_dir / f"{p.stem}_mask.png" for p in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        if not self.masks[index].is_file():
            raise FileNotFoundError(f"mask for {self.images[index].name} not found: "
                                    f"{self.masks[index]}")
        image_u8 = read_rgb(self.images[index], image_id=index)
        try:
            with Image.open(self.masks[index]) as im:
                ids_map = np.array(im)  # (H, W) instance ids, 0 = background
        except (OSError, ValueError, SyntaxError) as err:
            raise ImageReadError(f"cannot read the mask of image {index} ({self.masks[index]}): "
                                 f"{err}") from err
        if ids_map.shape != image_u8.shape[:2]:
            raise ValueError(f"mask {self.masks[index]} is {ids_map.shape[0]}x{ids_map.shape[1]} "
                             f"(HxW) but its image {self.images[index]} is "
                             f"{image_u8.shape[0]}x{image_u8.shape[1]}")
        # one binary mask per instance id: compare the id map with each id (broadcasting)
        ids = np.unique(ids_map)
        ids = ids[ids != 0]
        masks = (ids_map[None] == ids[:, None, None]).astype(np.uint8)
        n = len(ids)
        target = {
            "boxes": torch.from_numpy(masks_to_boxes(masks)),
            "labels": torch.ones(n, dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": int(index),
            "area": torch.from_numpy(masks.sum(axis=(1, 2)).astype(np.float32)),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
        }
        image = image_to_tensor(image_u8)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


# --------------------------------------------------------------------------------------------
# fetching the real data set (with a network), or finding it where the user placed it
# --------------------------------------------------------------------------------------------

PENN_FUDAN_URL = "https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip"
PENN_FUDAN_IMAGES = 170  # images (and masks) in the published archive
ARCHIVE_NAME = "PennFudanPed.zip"
FOLDER_NAME = "PennFudanPed"


def download_penn_fudan(root="data", url: str = PENN_FUDAN_URL, *, expected_images=PENN_FUDAN_IMAGES,
                        timeout: float = 10.0, opener=None, transforms=None) -> PennFudan:
    """Return the Penn-Fudan dataset in ``root/PennFudanPed``, fetching and unzipping it if needed.

    Order of work: a complete ``root/PennFudanPed`` is used as it is; else an archive at
    ``root/PennFudanPed.zip`` (downloaded earlier, or placed by hand on a machine without a
    network) is checked and unzipped; else ``url`` is fetched to that path first.

    url: where to fetch the archive (``https://``, ``http://`` or ``file://``).
    expected_images: the number of images the archive must hold (170 for the published one;
        ``None`` checks only the layout).
    timeout: seconds to wait for the server before giving up (an offline machine fails at once).
    opener: ``opener(url, timeout) -> file-like`` to read the archive from; default
        ``urllib.request.urlopen``.
    Raises DownloadError (one line: why, and the file to place where) when the archive cannot be
    fetched, ValueError naming the archive when it is not the Penn-Fudan layout or is corrupt.
    The archive is unzipped into a temporary folder beside the target and renamed into place, so an
    interrupted run never leaves a half-filled ``PennFudanPed/``.
    """
    root = Path(root)
    target, archive = root / FOLDER_NAME, root / ARCHIVE_NAME
    if target.exists():
        _check_folder(target, expected_images)
        return PennFudan(target, transforms=transforms)
    if not archive.is_file():
        _fetch(url, archive, timeout, opener)
    members = verify_penn_fudan_zip(archive, expected_images)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.", dir=root))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp, members=members)
        os.replace(tmp / FOLDER_NAME, target)  # atomic on one file system
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PennFudan(target, transforms=transforms)


def _fetch(url: str, archive: Path, timeout: float, opener) -> None:
    """Stream ``url`` to ``archive`` (via ``archive.part``, renamed at the end)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    opener = opener or (lambda u, t: urllib.request.urlopen(u, timeout=t))
    try:
        with opener(url, timeout) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
    except (OSError, ValueError) as err:  # URLError, HTTPError, timeouts, refused; ValueError: a bad URL
        part.unlink(missing_ok=True)
        reason = str(getattr(err, "reason", None) or err).splitlines()
        reason = reason[0] if reason else type(err).__name__
        raise DownloadError(f"cannot download {url} ({reason}); place {ARCHIVE_NAME} from that "
                            f"address at {archive.resolve()} and run again") from None
    os.replace(part, archive)


def verify_penn_fudan_zip(archive, expected_images=PENN_FUDAN_IMAGES) -> list:
    """Check that ``archive`` is the Penn-Fudan zip; return the names of its members to extract.

    Checks: a readable zip whose members pass their CRC-32 checks; every name stays inside
    ``PennFudanPed/`` (no absolute path, no ``..``); ``PNGImages/*.png`` and
    ``PedMasks/*_mask.png`` pair up one to one; ``expected_images`` images when given.
    Raises ValueError naming the archive and what is wrong.
    """
    archive = Path(archive)
    fix = "delete it and run again to download it anew"
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            bad = zf.testzip()  # reads every member and checks its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{archive} is not a readable zip archive ({err}); {fix}") from None
    if bad is not None:
        raise ValueError(f"{archive}: member {bad} is corrupt (CRC-32 mismatch); {fix}")
    members = []
    for name in names:
        p = PurePosixPath(name)
        if p.is_absolute() or ".." in p.parts or "\\" in name:
            raise ValueError(f"{archive}: member {name!r} would be written outside the folder; {fix}")
        if p.parts and p.parts[0] == FOLDER_NAME:
            members.append(name)
    images = {PurePosixPath(n).stem for n in members
              if PurePosixPath(n).parent == PurePosixPath(FOLDER_NAME, "PNGImages") and n.endswith(".png")}
    masks = {PurePosixPath(n).stem[:-len("_mask")] for n in members
             if PurePosixPath(n).parent == PurePosixPath(FOLDER_NAME, "PedMasks") and n.endswith("_mask.png")}
    if not images:
        raise ValueError(f"{archive} has no {FOLDER_NAME}/PNGImages/*.png: not the Penn-Fudan archive; {fix}")
    if images != masks:
        odd = sorted(images ^ masks)
        raise ValueError(f"{archive}: images and masks do not pair up ({len(images)} images, {len(masks)} "
                         f"masks; first unpaired: {odd[0]}); {fix}")
    if expected_images is not None and len(images) != expected_images:
        raise ValueError(f"{archive} holds {len(images)} images, the published archive "
                         f"{expected_images}; {fix}")
    return members


def _check_folder(target: Path, expected_images) -> None:
    """A ``PennFudanPed/`` already on disk must be complete; a partial one is the user's to remove."""
    imgs = {p.stem for p in (target / "PNGImages").glob("*.png")}
    masks = {p.stem[:-len("_mask")] for p in (target / "PedMasks").glob("*_mask.png")}
    if not imgs or imgs != masks or (expected_images is not None and len(imgs) != expected_images):
        raise ValueError(f"{target} exists but is incomplete ({len(imgs)} images, {len(masks)} masks"
                         f"{f', expected {expected_images}' if expected_images is not None else ''}); "
                         f"remove it and run again")


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mrcnn_lite.data.penn_fudan",
                                description="Fetch, check and unzip the Penn-Fudan pedestrian data set.")
    p.add_argument("--root", type=Path, default=Path("data"),
                   help="folder to put PennFudanPed.zip and PennFudanPed/ in (default: data)")
    p.add_argument("--url", default=PENN_FUDAN_URL)
    args = p.parse_args(argv)
    try:
        ds = download_penn_fudan(args.root, args.url)
    except (DownloadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{ds.root}: {len(ds)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
