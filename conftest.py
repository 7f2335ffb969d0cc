"""Repository-root conftest: its presence puts the repository root on ``sys.path`` (pytest's
default ``prepend`` import mode inserts a root-level conftest's folder), so the tests can import
the benchmark harness, ``bench.harness``, which lives in the checkout and is not installed.
The library itself is imported as installed (``pip install -e .``); nothing else is done here.
"""
