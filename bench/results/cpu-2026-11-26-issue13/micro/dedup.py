import sys, time, statistics, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
from bench.harness.workloads import grid, make_inputs
inp = make_inputs(grid("quick")[0])
idx, go = inp.indices, inp.grad_output
D = go.shape[1]
def t(name, fn, n=15):
    for _ in range(3): r = fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); r = fn(); ts.append(time.perf_counter() - t0)
    print(f"{name:40s} {statistics.median(ts)*1e3:7.2f} ms", flush=True); return r
u, inv, cnt = t("unique(inverse,counts)", lambda: torch.unique(idx, sorted=True, return_inverse=True, return_counts=True))
t("sort", lambda: torch.sort(idx))
t("sort stable", lambda: torch.sort(idx, stable=True))
t("sort int32 stable", lambda: torch.sort(idx.to(torch.int32), stable=True))
U = u.numel()
a = t("index_add_", lambda: torch.zeros(U, D).index_add_(0, inv, go))
b = t("scatter_add_ expanded", lambda: torch.zeros(U, D).scatter_add_(0, inv.unsqueeze(1).expand(-1, D), go))
print("bit equal", torch.equal(a, b))
c = t("index_reduce_ sum?", lambda: torch.zeros(U, D).index_reduce_(0, inv, go, "mean", include_self=False) if False else torch.zeros(1))
V = inp.weight.shape[0]
def coal():
    return torch.sparse_coo_tensor(idx.unsqueeze(0), go, (V, D)).coalesce()
s = t("coo coalesce", coal)
print("coalesce equal", torch.equal(s._values(), a))
w = inp.weight.clone()
t("weight.index_add_ raw rows", lambda: w.index_add_(0, idx, go, alpha=-0.01))
t("weight.scatter_add_ expanded raw", lambda: w.scatter_add_(0, idx.unsqueeze(1).expand(-1, D), go))
t("go.index_select(perm)", lambda: go.index_select(0, inv))
t("segment_reduce sorted", lambda: torch.segment_reduce(go, "sum", lengths=cnt))
print(torch.backends.mkl.is_available(), torch.get_num_threads())
def csr():
    s, perm = torch.sort(idx, stable=True)
    u2, cnt2 = torch.unique_consecutive(s, return_counts=True)
    crow = torch.zeros(u2.numel() + 1, dtype=torch.int64); torch.cumsum(cnt2, 0, out=crow[1:])
    m = torch.sparse_csr_tensor(crow, perm, torch.ones(idx.numel()), (u2.numel(), idx.numel()))
    return m @ go
c = t("csr spmm incl sort", csr)
print("csr bit equal", torch.equal(c, a), (c - a).abs().max())
s, perm = torch.sort(idx, stable=True)
u2, cnt2 = torch.unique_consecutive(s, return_counts=True)
crow = torch.zeros(u2.numel() + 1, dtype=torch.int64); torch.cumsum(cnt2, 0, out=crow[1:])
m = torch.sparse_csr_tensor(crow, perm, torch.ones(idx.numel()), (u2.numel(), idx.numel()))
t("csr spmm only", lambda: m @ go)
m32 = torch.sparse_csr_tensor(crow.int(), perm.int(), torch.ones(idx.numel()), (u2.numel(), idx.numel()))
t("csr spmm only int32", lambda: m32 @ go)
t("unique_consecutive", lambda: torch.unique_consecutive(s, return_counts=True))
import torch.nn.functional as F
offs = crow[:-1]
e = t("embedding_bag sum(perm)", lambda: F.embedding_bag(perm, go, offs, mode="sum"))
print("ebag bit equal", torch.equal(e, a), (e - a).abs().max())
def full():
    s, perm = torch.sort(idx, stable=True)
    u2, cnt2 = torch.unique_consecutive(s, return_counts=True)
    offs = torch.zeros(u2.numel(), dtype=torch.int64); torch.cumsum(cnt2[:-1], 0, out=offs[1:])
    return F.embedding_bag(perm, go, offs, mode="sum")
t("full sort+ebag", full)
t("embedding_bag int32", lambda: F.embedding_bag(perm.int(), go, offs.int(), mode="sum"))
torch.set_num_threads(1)
t("index_add_ 1 thread", lambda: torch.zeros(U, D).index_add_(0, inv, go))
t("embedding_bag 1 thread", lambda: F.embedding_bag(perm, go, offs, mode="sum"))
