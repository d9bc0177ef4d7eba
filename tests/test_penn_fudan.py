"""download_penn_fudan without a network: a local archive in the real layout, and the offline error."""
import io
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from mrcnn_lite.data.penn_fudan import (PENN_FUDAN_IMAGES, PENN_FUDAN_URL, DownloadError, PennFudan,
                                        download_penn_fudan, verify_penn_fudan_zip)


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def make_archive(path, n=3, drop_mask=None, extra=()):
    """A zip in the published layout: n images of 40x60 with k+1 people (upright bars) in image k."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("PennFudanPed/readme.txt", "fake Penn-Fudan for tests\n")
        for k in range(n):
            name = f"FudanPed{k + 1:05d}"
            img = np.full((40, 60, 3), 90, dtype=np.uint8)
            ids = np.zeros((40, 60), dtype=np.uint8)
            for person in range(1, k + 2):
                x = 4 + 12 * (person - 1)
                ids[5:35, x:x + 8] = person
                img[5:35, x:x + 8] = (50 * person, 100, 30)
            zf.writestr(f"PennFudanPed/PNGImages/{name}.png", _png(img))
            if k != drop_mask:
                zf.writestr(f"PennFudanPed/PedMasks/{name}_mask.png", _png(ids))
        for name, data in extra:
            zf.writestr(name, data)
    return path


def test_fetch_from_file_url_verifies_and_extracts(tmp_path):
    src = make_archive(tmp_path / "served.zip")
    root = tmp_path / "data"
    ds = download_penn_fudan(root, src.as_uri(), expected_images=3)
    assert isinstance(ds, PennFudan) and len(ds) == 3
    assert (root / "PennFudanPed.zip").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in (root / "PennFudanPed" / "PedMasks").iterdir()) == \
        ["FudanPed00001_mask.png", "FudanPed00002_mask.png", "FudanPed00003_mask.png"]
    _, target = ds[2]
    assert target["labels"].tolist() == [1, 1, 1]
    assert target["boxes"].tolist()[1] == [16.0, 5.0, 24.0, 35.0]
    # nothing left behind: no .part file, no temporary folder
    assert sorted(p.name for p in root.iterdir()) == ["PennFudanPed", "PennFudanPed.zip"]

    # a second call reuses the folder and never touches the URL
    again = download_penn_fudan(root, "http://127.0.0.1:9/unused.zip", expected_images=3)
    assert len(again) == 3


def test_injected_opener_and_a_placed_archive(tmp_path):
    src = make_archive(tmp_path / "served.zip", n=2)
    calls = []

    def opener(url, timeout):
        calls.append((url, timeout))
        return open(src, "rb")

    ds = download_penn_fudan(tmp_path / "a", opener=opener, expected_images=2, timeout=3.0)
    assert len(ds) == 2 and calls == [(PENN_FUDAN_URL, 3.0)]

    # an archive placed by hand (a machine without a network) is used without fetching anything
    placed = tmp_path / "b"
    placed.mkdir()
    (placed / "PennFudanPed.zip").write_bytes(src.read_bytes())
    ds = download_penn_fudan(placed, opener=lambda u, t: pytest.fail("fetched"), expected_images=2)
    assert len(ds) == 2


def test_offline_fails_at_once_with_one_line(tmp_path):
    root = tmp_path / "data"
    for url in ("http://127.0.0.1:9/PennFudanPed.zip", (tmp_path / "missing.zip").as_uri()):
        start = time.perf_counter()
        with pytest.raises(DownloadError) as err:
            download_penn_fudan(root, url)
        assert time.perf_counter() - start < 5.0
        msg = str(err.value)
        assert "\n" not in msg
        assert url in msg and str((root / "PennFudanPed.zip").resolve()) in msg
        assert not (root / "PennFudanPed.zip.part").exists() and not (root / "PennFudanPed").exists()

    def timing_out(url, timeout):
        raise TimeoutError("timed out")

    with pytest.raises(DownloadError, match=r"cannot download .*\(timed out\); place PennFudanPed.zip"):
        download_penn_fudan(root, opener=timing_out)


def test_verification_refuses_what_is_not_the_archive(tmp_path):
    # wrong image count against the published 170
    src = make_archive(tmp_path / "three.zip")
    with pytest.raises(ValueError, match=rf"holds 3 images, the published archive {PENN_FUDAN_IMAGES}"):
        verify_penn_fudan_zip(src)
    # an image without its mask
    with pytest.raises(ValueError, match="do not pair up .* FudanPed00002"):
        verify_penn_fudan_zip(make_archive(tmp_path / "nomask.zip", drop_mask=1), expected_images=None)
    # a member escaping the folder
    evil = make_archive(tmp_path / "evil.zip", extra=[("PennFudanPed/../../evil.txt", "x")])
    with pytest.raises(ValueError, match="outside the folder"):
        verify_penn_fudan_zip(evil, expected_images=3)
    # not a zip at all (e.g. an HTML page served instead): named, and nothing extracted
    html = tmp_path / "root" / "PennFudanPed.zip"
    html.parent.mkdir()
    html.write_text("<html>login</html>")
    with pytest.raises(ValueError, match="not a readable zip archive"):
        download_penn_fudan(html.parent)
    assert not (html.parent / "PennFudanPed").exists()


def test_corrupt_member_is_caught_by_its_crc(tmp_path):
    src = make_archive(tmp_path / "ok.zip")
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("PennFudanPed/readme.txt")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start] ^= 0xFF  # flip one byte of the stored (uncompressed) readme
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="PennFudanPed/readme.txt is corrupt"):
        verify_penn_fudan_zip(bad, expected_images=3)


def test_incomplete_folder_is_not_overwritten(tmp_path):
    (tmp_path / "PennFudanPed" / "PNGImages").mkdir(parents=True)
    (tmp_path / "PennFudanPed" / "PedMasks").mkdir()
    with pytest.raises(ValueError, match="exists but is incomplete .*remove it"):
        download_penn_fudan(tmp_path, opener=lambda u, t: pytest.fail("fetched"))
