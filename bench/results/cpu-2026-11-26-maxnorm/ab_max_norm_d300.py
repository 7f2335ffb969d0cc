import sys, time, torch, numpy as np
import sparsemb
from sparsemb.torch_backend import numba_rows
V, D, N = 200_000, 300, 65536
g = torch.Generator().manual_seed(0)
w = torch.randn(V, D, generator=g)
idx = torch.randint(0, V, (N,), generator=g)
plain = sparsemb.Embedding(V, D, _weight=w.clone())
mn = sparsemb.Embedding(V, D, max_norm=1.0, _weight=w.clone())
old = sparsemb.Embedding(V, D, max_norm=1.0, _weight=w.clone())
def old_call():
    real = numba_rows.available; numba_rows.available = lambda: False
    try: return old(idx)
    finally: numba_rows.available = real
cases = {"plain": lambda: plain(idx), "max_norm": lambda: mn(idx), "max_norm_blocked": old_call}
res = {k: [] for k in cases}
with torch.no_grad():
    for _ in range(5):
        for f in cases.values(): f()
    for _ in range(40):
        for k, f in cases.items():
            t = time.perf_counter(); o = f(); res[k].append(time.perf_counter() - t); del o
med = {k: round(float(np.median(v)) * 1e3, 2) for k, v in res.items()}
print("V=2e5 D=300 N=65536 uniform:", med, "ratio new %.2f blocked %.2f" % (med["max_norm"] / med["plain"], med["max_norm_blocked"] / med["plain"]))
assert torch.equal(mn.weight, old.weight)
