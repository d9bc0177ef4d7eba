"""The course tools: exercise checkers (``checks``), student versions and nbgrader metadata
(``assignments``), the autograder (``grade``), and the debugging labs' stored tensors (``lab_case``).
``python -m mrcnn_lite.course --help`` lists the teacher's commands."""
