"""Benchmark scripts. Run each as a module from the repository root, with the project's venv:
``.venv/bin/python -m benchmarks.<name> --help``. They import the installed ``shared`` and
``services`` packages and reuse the test helpers in ``tests/support`` (broker, topic reader,
service processes, models); results and the exact commands are in ``docs/benchmarks.md``.
"""
