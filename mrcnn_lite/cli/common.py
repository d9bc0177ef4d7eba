"""What every command of the CLI shares: argument types, output checks, one-line errors, loading.

The argument types check one command-line value in the parser, so a bad value is a usage error naming
the argument ("argument --lr: must be a finite number > 0, got nan") before anything runs. The other
helpers turn what can go wrong with a path, a checkpoint or a dataset into one ``error: ...`` line
(``SystemExit``), not a traceback.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path


def command_parser(prog: str, description: str):
    """The top-level parser of a ``python -m ...`` tool with sub-commands: returns ``(parser, subparsers)``.

    Each command registers its sub-parser on ``subparsers`` and sets ``func``, which :func:`run_command`
    calls with the parsed arguments.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, subparsers


def run_command(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the chosen command; returns its exit status."""
    args = parser.parse_args(argv)
    return args.func(args)


# ----------------------------------------------------------------------------------- argument types


def int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"  # what argparse calls the type in its messages
    return parse


def float_in(low: float, high: float = float("inf"), low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or value > high:
            bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


POSITIVE_INT, NON_NEGATIVE_INT = int_at_least(1), int_at_least(0)
POSITIVE_FLOAT, NON_NEGATIVE_FLOAT = float_in(0.0, low_open=True), float_in(0.0)
PROBABILITY = float_in(0.0, 1.0)


def add_checkpoint_command(subparsers, name: str, func, help: str) -> argparse.ArgumentParser:
    """Register command ``name``, run by ``func(args)``, that reads a training checkpoint (its required
    ``--checkpoint``); ``func``'s docstring is the command's description in ``--help``."""
    p = subparsers.add_parser(name, help=help, description=func.__doc__)
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint.pt written by train")
    p.set_defaults(func=func)
    return p


# ----------------------------------------------------------------------------------- checks and errors


def check_out_dir(path: Path, arg: str = "--out") -> None:
    """Make sure the output folder exists (or can be made) and is writable, before any work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as e:
        raise SystemExit(f"error: {arg} {path}: cannot write there ({e.strerror or e})")


def check_out_file(path: Path, arg: str = "--out") -> None:
    """Make sure ``path`` can be written as a file (its folder exists or can be made), before any work."""
    if path.is_dir():
        raise SystemExit(f"error: {arg} {path} is a folder; give a file name (e.g. {path / 'metrics.json'})")
    check_out_dir(path.parent, f"{arg} {path}: its folder")


def one_line(err: BaseException) -> str:
    """The first line of an exception's message: the CLI prints one clear line, not a traceback."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("Caught ") and len(lines) > 1:
        # re-raised from a DataLoader worker: the original message is the traceback's last line
        return lines[-1].split(": ", 1)[-1]
    return lines[0]


def use_agg() -> None:
    """Files are all the CLI draws: use the Agg backend unless pyplot is already set up."""
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")


def device_arg(name: str):
    """The ``--device`` value, refused when it names CUDA on a machine without it."""
    import torch
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    return name


# ----------------------------------------------------------------------------------- data and checkpoints


def coco_dataset(images, annotations, what: str, transforms=None):
    """Load and check a COCO-format dataset (every record, and that every image file exists)."""
    from ..data import CocoInstances
    if images is None or annotations is None:
        raise SystemExit(f"error: {what} needs both --images DIR and --annotations FILE.json")
    try:
        dataset = CocoInstances(images, annotations, transforms=transforms)
        dataset.check_files()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {one_line(e)}")
    if len(dataset) == 0:
        raise SystemExit(f"error: {annotations} lists no images")
    return dataset


def load_model(path, device):
    """The model of a ``train`` checkpoint, rebuilt from its config."""
    from ..engine.checkpoint import load_checkpoint
    try:
        return load_checkpoint(path, map_location=device)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {one_line(e)}")


def checkpoint_meta(checkpoint_path, key: str, num_classes: int, default: list) -> list:
    """``meta[key]`` of a checkpoint, one entry per label, when it has one for ``num_classes``; else ``default``."""
    from ..engine.checkpoint import read_checkpoint
    values = read_checkpoint(checkpoint_path).get("meta", {}).get(key)
    return list(values) if values and len(values) == num_classes else default


def class_names(checkpoint_path, num_classes: int) -> list:
    """Class names saved with a checkpoint (``meta["class_names"]``), else the label numbers."""
    return checkpoint_meta(checkpoint_path, "class_names", num_classes,
                           ["__background__"] + [str(i) for i in range(1, num_classes)])


def label_to_category(checkpoint_path, num_classes: int) -> list:
    """The category id of each label, saved with a checkpoint by ``train`` (``meta["label_to_category"]``);
    label = category id when the checkpoint has none (or the dataset's ids were small)."""
    mapping = checkpoint_meta(checkpoint_path, "label_to_category", num_classes, list(range(num_classes)))
    return [int(c) for c in mapping]


def print_ap(metrics: dict, header: str) -> None:
    """One line per kind (box, mask): COCO AP, AP50, AP75 and the three size ranges."""
    for kind, name in (("bbox", "box"), ("segm", "mask")):
        m = metrics[kind]
        print(f"{header} {name:4s} AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}  "
              f"APs {m['APs']:.3f}  APm {m['APm']:.3f}  APl {m['APl']:.3f}")
