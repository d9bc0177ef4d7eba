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


def test_shapes_command_writes_only_the_val_split_with_num_train_0(tmp_path, capsys):
    """`make demo`'s held-out export: `--num-train 0` writes the val split (seed + 1) alone."""
    out = tmp_path / "heldout"
    assert main(["shapes", "--out", str(out), "--num-train", "0", "--num-val", "4", "--seed", "99"]) == 0
    assert "val: 4 images" in capsys.readouterr().out and not (out / "train").exists()
    assert len(CocoInstances(out / "val" / "images", out / "val" / "annotations.json")) == 4
    assert (out / "shapes_grid.png").exists()
    with pytest.raises(SystemExit, match="nothing to write"):
        main(["shapes", "--out", str(out), "--num-train", "0", "--num-val", "0"])


def test_help_lists_commands():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "shapes" in parser.format_help()

