"""The benchmark harness: sparsemb against the peers it replaces (run from the repository root).

    workloads.py  what is looked up: ``Workload``, seeded inputs, the Zipf generator, grids
    providers.py  who runs it: sparsemb, torch, torch.compile, FBGEMM, per group of work
    measure.py    step timing, peak memory, bytes moved, one provider's row of numbers
    worker.py     the subprocess protocol: one worker per workload (or provider)
    targets.py    the issue's targets, judged from the rows
    machine.py    device, versions, git commit, load
    report.py     markdown tables, plot, results.json
    cli.py        ``python -m bench.harness``: plan, run, report, write

The pytest-benchmark suites (``bench/test_*.py``) time the same providers on the same inputs.
Nothing here ships in the sparsemb wheel.
"""
