"""Forward gather, plain and with max_norm: sparsemb vs torch.nn.Embedding, torch.compile, FBGEMM.

Timed under ``torch.no_grad()`` (inference lookups); GB/s counts N rows read, N rows written and
the indices (plus the unique rows' norms under max_norm).
"""

GROUPS = ("forward", "forward_max_norm")


def test_forward(benchmark, bench_env, bench_case):
    bench_env.run(benchmark, bench_case)
