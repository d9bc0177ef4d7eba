"""`python -m mrcnn_lite shapes` writes a COCO train/val export and a sample grid."""
import pytest

from mrcnn_lite.__main__ import build_parser, main
from mrcnn_lite.data import CocoInstances


def test_shapes_command(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["shapes", "--out", str(out), "--num-train", "6", "--num-val", "3",
                 "--seed", "2", "--image-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "train: 6 images" in printed and "val: 3 images" in printed
    assert "circle" in printed and "square" in printed and "triangle" in printed
    assert (out / "shapes_grid.png").stat().st_size > 1000
    for split, n in (("train", 6), ("val", 3)):
        ds = CocoInstances(out / split / "images", out / split / "annotations.json")
        assert len(ds) == n


def test_help_lists_commands():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "shapes" in parser.format_help()

