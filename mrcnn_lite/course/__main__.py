"""Teacher tools: ``python -m mrcnn_lite.course make-assignments|grade ...`` (``--help`` on each).

    python -m mrcnn_lite.course make-assignments --out student/            # all notebooks/NN_*.ipynb
    python -m mrcnn_lite.course make-assignments --out student/ notebooks/01_boxes_iou_nms.ipynb
    python -m mrcnn_lite.course grade student/01_boxes_iou_nms.ipynb --json grade.json
    python -m mrcnn_lite.course add-nbgrader-metadata notebooks/01_boxes_iou_nms.ipynb
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_make_assignments(args) -> int:
    from .assignments import default_notebooks, make_assignments

    notebooks = args.notebooks or default_notebooks(Path("notebooks"))
    if not notebooks:
        print("no notebooks given and none found in ./notebooks", file=sys.stderr)
        return 2
    for path in make_assignments(notebooks, args.out):
        print(f"wrote {path}")
    return 0


def cmd_grade(args) -> int:
    from .grade import format_table, grade_notebook

    reports = []
    for path in args.notebooks:
        report = grade_notebook(path, timeout=args.timeout)
        print(format_table(report))
        reports.append(report)
    if args.json:
        data = reports[0] if len(reports) == 1 else {
            "score": sum(r["score"] for r in reports), "max_score": sum(r["max_score"] for r in reports),
            "notebooks": reports}
        Path(args.json).write_text(json.dumps(data, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_add_nbgrader_metadata(args) -> int:
    import nbformat

    from .assignments import add_nbgrader_metadata, split_check_cells

    for path in args.notebooks:
        nb = nbformat.read(str(path), as_version=4)
        add_nbgrader_metadata(split_check_cells(nb))
        nbformat.write(nb, str(path))
        print(f"marked {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mrcnn_lite.course",
        description="Course tools for teachers: make student versions of the notebooks, grade them.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-assignments", help="write student copies with the solutions removed",
                       description="Write a student copy of each notebook (same file name) into --out: every "
                                   "block between '### BEGIN SOLUTION' and '### END SOLUTION' becomes "
                                   "'# YOUR CODE HERE' + 'raise NotImplementedError'; outputs, execution counts "
                                   "and cell metadata are cleared.")
    p.add_argument("--out", required=True, type=Path, help="folder for the student notebooks")
    p.add_argument("notebooks", nargs="*", type=Path,
                   help="notebooks to convert (default: all notebooks/NN_*.ipynb)")
    p.set_defaults(func=cmd_make_assignments)

    p = sub.add_parser("grade", help="execute a notebook and score its exercises",
                       description="Execute each notebook with nbclient (errors do not stop the run), score every "
                                   "check cell, print a table and optionally write JSON: {score, max_score, "
                                   "exercises: [{name, points, max_points, message}]}.")
    p.add_argument("notebooks", nargs="+", type=Path, help="notebook(s) to grade")
    p.add_argument("--json", type=Path, help="write the scores to this JSON file")
    p.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell (default 300)")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("add-nbgrader-metadata", help="mark exercise and check cells for nbgrader (in place)",
                       description="Give every solution cell nbgrader's 'autograded answer' metadata and every "
                                   "check cell the 'autograder test' metadata with its points; a check cell's "
                                   "lines after the check call move to a cell of their own, so that the call's "
                                   "value (the points) is the cell's result, which nbgrader reads as the score.")
    p.add_argument("notebooks", nargs="+", type=Path, help="solution notebook(s) to mark")
    p.set_defaults(func=cmd_add_nbgrader_metadata)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
