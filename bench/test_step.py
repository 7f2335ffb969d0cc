"""Full training step (forward, backward, optimizer, zero_grad) per update rule, and the Adam
update alone on one coalesced sparse gradient (``optim_adam``, whose GB/s is the optimizer's).

Peers: nn.Embedding with a dense gradient + torch.optim (Adam also with ``fused=True``),
nn.Embedding(sparse=True) + torch's sparse-capable rules (SGD, Adagrad, SparseAdam),
torch.compile of the dense model, FBGEMM's TBE (EXACT_SGD, EXACT_ROWWISE_ADAGRAD; its update is
fused into backward) and sparsemb's own fused-backward mode.
"""

GROUPS = ("step_sgd", "step_adagrad", "step_rowwise_adagrad", "step_adam", "optim_adam")


def test_step(benchmark, bench_env, bench_case):
    bench_env.run(benchmark, bench_case)
