import time, torch, statistics, os
from sparsemb.torch_backend import optim as O
from sparsemb import _memory
V, D, U = 1_000_000, 128, 10490
weight = _memory.empty(V, D, dtype=torch.float32, device="cpu").normal_(); _memory.collapse_to_huge_pages(weight)
perms = [torch.randperm(V)[:U].sort().values for _ in range(8)]
vals = torch.randn(U, D)
res = {"0": [], "1": []}
for rep in range(30):
    for k in res:
        os.environ["SPARSEMB_NUMBA"] = k
        t = time.perf_counter(); O.sgd_update_(weight, perms[rep % 8], vals, neg_lr=-0.01, weight_decay=0.0, sr_seed=None); res[k].append(time.perf_counter() - t)
for k, x in res.items():
    print("numba" if k == "1" else "torch ops", f"median {statistics.median(x[3:])*1e3:.2f} ms min {min(x[3:])*1e3:.2f}")
