"""Teacher tools: ``python -m mrcnn_lite.course list|make-assignments|grade ...`` (``--help`` on each).

    python -m mrcnn_lite.course list                                       # every graded item, a table
    python -m mrcnn_lite.course list --json                                # the same, as JSON
    python -m mrcnn_lite.course list --markdown                            # the teachers' table
    python -m mrcnn_lite.course make-assignments --out student/            # all notebooks/NN_*.ipynb
    python -m mrcnn_lite.course make-assignments --out student/ notebooks/01_boxes_iou_nms.ipynb
    python -m mrcnn_lite.course grade student/01_boxes_iou_nms.ipynb --json grade.json
    python -m mrcnn_lite.course add-nbgrader-metadata notebooks/01_boxes_iou_nms.ipynb
    python -m mrcnn_lite.course experiment levels --seeds 0,1 --budget full --out benchmarks/experiments
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


def cmd_list(args) -> int:
    from .assignments import default_notebooks
    from .items import course_notebooks_dir, format_items, markdown_table, read_items

    notebooks = args.notebooks or default_notebooks(course_notebooks_dir())
    items = [item for path in notebooks for item in read_items(path)]
    if args.json:
        print(json.dumps([i.to_dict() for i in items], indent=1))
    elif args.markdown:
        print(markdown_table(items))
    else:
        print(format_items(items))
    return 0


def cmd_grade(args) -> int:
    from .grade import format_table, grade_notebook

    reports = []
    for path in args.notebooks:
        source = None
        if args.source is not None:
            source = args.source / Path(path).name if args.source.is_dir() else args.source
        report = grade_notebook(path, timeout=args.timeout, source=source, memory_gb=args.memory_gb,
                                run_notebook=args.run_notebook)
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


def cmd_experiment(args) -> int:
    from .experiments import EXPERIMENTS, TABLE_METRICS, format_table, write_reference

    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"--seeds must be integers separated by commas, got {args.seeds!r}", file=sys.stderr)
        return 2
    for name in names:
        result = write_reference(name, seeds, args.budget, args.out)
        print(format_table(result, TABLE_METRICS[name]))
        print(f"{name}: {result['seconds']:.0f} s; wrote {args.out / (name + '.json')} and .md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mrcnn_lite.course",
        description="Course tools for teachers: make student versions of the notebooks, grade them.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list every graded item of the course",
                       description="Every graded item of the notebooks: notebook, name, kind (build, lab, "
                                   "experiment, prediction), points, graded automatically or by hand. The grader "
                                   "and add-nbgrader-metadata read the same items.")
    p.add_argument("notebooks", nargs="*", type=Path, help="notebooks to read (default: all notebooks/NN_*.ipynb)")
    p.add_argument("--json", action="store_true", help="print JSON: [{notebook, name, kind, points, graded}]")
    p.add_argument("--markdown", action="store_true",
                   help="print the teachers' table (one row per notebook, as in docs/teachers.md)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("make-assignments", help="write student copies with the solutions removed",
                       description="Write a student copy of each notebook (same file name) into --out: every "
                                   "block between '### BEGIN SOLUTION' and '### END SOLUTION' becomes "
                                   "'# YOUR CODE HERE' + 'raise NotImplementedError'; outputs and execution counts "
                                   "are cleared, and cell metadata but tags, nbgrader's and the hint cells' "
                                   "collapse.")
    p.add_argument("--out", required=True, type=Path, help="folder for the student notebooks")
    p.add_argument("notebooks", nargs="*", type=Path,
                   help="notebooks to convert (default: all notebooks/NN_*.ipynb)")
    p.set_defaults(func=cmd_make_assignments)

    p = sub.add_parser("grade", help="score submitted notebooks where the learner's code cannot reach the scoring",
                       description="Score each submitted notebook against the course's notebook of the same name: "
                                   "the submission's answer cells run in a fresh process beside the course's own "
                                   "definitions, the checkers call the learner's functions there, and the outputs "
                                   "are compared with the references in this process. Nothing the learner's kernel "
                                   "recorded is read. Prints a table and optionally writes JSON: {score, max_score, "
                                   "exercises: [{name, kind, points, max_points, status, message}], by_hand, errors}.")
    p.add_argument("notebooks", nargs="+", type=Path, help="notebook(s) to grade")
    p.add_argument("--json", type=Path, help="write the scores to this JSON file")
    p.add_argument("--source", type=Path, default=None,
                   help="the course's notebook, or a folder of them (default: ./notebooks, else the package's)")
    p.add_argument("--timeout", type=int, default=300, help="seconds allowed per answer cell or check (default 300)")
    p.add_argument("--memory-gb", type=float, default=6.0,
                   help="memory limit of the process that runs the answers (default 6)")
    p.add_argument("--run-notebook", action="store_true",
                   help="also execute each submission as written and note (not score) where it fails")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("add-nbgrader-metadata", help="mark exercise and check cells for nbgrader (in place)",
                       description="Give every solution cell nbgrader's 'autograded answer' metadata and every "
                                   "check cell the 'autograder test' metadata with its points; a check cell's "
                                   "lines after the check call move to a cell of their own, so that the call's "
                                   "value (the points) is the cell's result, which nbgrader reads as the score.")
    p.add_argument("notebooks", nargs="+", type=Path, help="solution notebook(s) to mark")
    p.set_defaults(func=cmd_add_nbgrader_metadata)

    p = sub.add_parser("experiment", help="run a graded experiment of notebook 16 with the reference change",
                       description="Run one of notebook 16's experiments (levels, anchors, mask_res, misalign; or "
                                   "all) with the reference change for each seed and write OUT/<name>.json (the "
                                   "results, the command, the machine) and OUT/<name>.md (a table): the reference "
                                   "results a teacher reads beside the learners'.")
    p.add_argument("name", choices=["levels", "anchors", "mask_res", "misalign", "all"])
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--budget", choices=["quick", "full"], default="full", help="quick (the notebook's) or full")
    p.add_argument("--out", type=Path, default=Path("benchmarks/experiments"), help="folder for the results")
    p.set_defaults(func=cmd_experiment)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
