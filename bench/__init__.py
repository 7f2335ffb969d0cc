"""Benchmarks of sparsemb (not installed: run from the repository root).

``python -m bench.harness`` is the report, ``pytest bench/ --benchmark-only`` the
pytest-benchmark suites; both use ``bench.harness``.
"""
