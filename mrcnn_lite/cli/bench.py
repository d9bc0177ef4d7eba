"""``python -m mrcnn_lite bench``: speed against torchvision (the harness is ``mrcnn_lite.bench``)."""
from __future__ import annotations


def add_bench_parser(subparsers) -> None:
    from .. import bench
    p = subparsers.add_parser("bench", help="speed benchmarks against torchvision (mrcnn_lite.bench)",
                              description=bench.__doc__.splitlines()[0])
    bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from .. import bench
    return int(bench.run(args) or 0)
