import sys, time, statistics, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
from bench.harness.workloads import grid, make_inputs
inp = make_inputs(grid("quick")[0])
idx, w = inp.indices, inp.weight
V = w.shape[0]
def t(name, fn, n=30):
    for _ in range(4): fn()
    ts=[]
    for _ in range(n):
        t0=time.perf_counter(); r = fn(); ts.append(time.perf_counter()-t0)
    print(f"{name:40s} {statistics.median(ts)*1e3:7.3f} ms", flush=True); return r
a = t("unique sorted", lambda: torch.unique(idx))
t("unique int32", lambda: torch.unique(idx.to(torch.int32)))
t("sort", lambda: torch.sort(idx)[0])
def bitmap():
    m = torch.zeros(V, dtype=torch.bool); m[idx] = True; return m.nonzero().squeeze(1)
b = t("bitmap", bitmap); print(torch.equal(a, b))
def bitmap2():
    m = torch.zeros(V, dtype=torch.bool); m.index_fill_(0, idx, True); return m.nonzero().squeeze(1)
b = t("bitmap index_fill", bitmap2); print(torch.equal(a, b))
def bitmap3():
    m = torch.zeros(V, dtype=torch.uint8); m.index_fill_(0, idx, 1); return torch.nonzero(m).squeeze(1)
t("bitmap u8", bitmap3)
m = torch.zeros(V, dtype=torch.bool)
t("zeros V bool", lambda: torch.zeros(V, dtype=torch.bool))
t("index_fill", lambda: m.index_fill_(0, idx, True))
t("nonzero", lambda: m.nonzero())

rows = w.index_select(0, a)
t("gather U", lambda: w.index_select(0, a))
t("norm U", lambda: torch.linalg.vector_norm(rows, dim=1))
t("norm U sq sum", lambda: rows.mul(rows).sum(1))
t("fwd", lambda: w.index_select(0, idx))
