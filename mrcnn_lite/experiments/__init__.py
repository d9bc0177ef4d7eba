"""The paper's experiments on the course model: ``variants`` (the swapped parts), ``ablations`` (the runner)."""
