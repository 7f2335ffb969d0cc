"""In-process A/B: plain forward vs max_norm forward (current code) vs the blocked path."""
import sys, time, torch, numpy as np
from bench.harness import workloads as W
import sparsemb
from sparsemb.torch_backend import renorm as R, numba_rows
w = W.Workload(**{**W.grid("quick")[0].__dict__}) if False else None
wl = [x for x in W.grid("quick") if x.num_embeddings == 1_000_000][0]
print(wl)
inp = W.make_inputs(wl)
plain = sparsemb.Embedding(*inp.weight.shape, _weight=inp.weight.clone())
mn = sparsemb.Embedding(*inp.weight.shape, max_norm=1.0, _weight=inp.weight.clone())
mn_old = sparsemb.Embedding(*inp.weight.shape, max_norm=1.0, _weight=inp.weight.clone())
idx = inp.indices
def old_call():
    real = numba_rows.available
    numba_rows.available = lambda: False
    try:
        return mn_old(idx)
    finally:
        numba_rows.available = real
cases = {"plain": lambda: plain(idx), "max_norm": lambda: mn(idx), "max_norm_blocked": old_call}
res = {k: [] for k in cases}
with torch.no_grad():
    for _ in range(5):
        for f in cases.values(): f()
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 60):
        for k, f in cases.items():
            t = time.perf_counter(); o = f(); res[k].append(time.perf_counter() - t); del o
med = {k: np.median(v) * 1e3 for k, v in res.items()}
print({k: round(v, 3) for k, v in med.items()},
      "ratio new %.2f blocked %.2f" % (med["max_norm"] / med["plain"], med["max_norm_blocked"] / med["plain"]))
assert torch.equal(mn.weight, mn_old.weight)
