"""Forward + backward, no optimizer: sparse gradient (sparsemb's deduplicated COO vs torch's
uncoalesced one) and dense gradient (a (V, D) tensor per step), ``.grad`` reset each step."""

GROUPS = ("fwd_bwd_sparse", "fwd_bwd_dense")


def test_fwd_bwd(benchmark, bench_env, bench_case):
    bench_env.run(benchmark, bench_case)
