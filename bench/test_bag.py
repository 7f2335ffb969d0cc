"""EmbeddingBag: pooled forward (sum, mean) and training step (Adam, SGD) at 4,096 bags x 32 Zipf
indices, sparsemb vs nn.EmbeddingBag (dense + Adam, sparse + SparseAdam / SGD) and FBGEMM's TBE
with PoolingMode.SUM / MEAN where it imports. See ``bench/harness/bag_providers.py``.
"""

GROUPS = ("bag_forward_sum", "bag_forward_mean", "bag_step_adam", "bag_step_sgd")


def test_bag(benchmark, bench_env, bench_case):
    bench_env.run(benchmark, bench_case)
