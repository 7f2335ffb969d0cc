import sys, time, statistics, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
torch.set_num_threads(int(sys.argv[1]))
from bench.harness.workloads import grid, make_inputs
from sparsemb import _memory
inp = make_inputs(grid("quick")[0])
rows = inp.sparse_grad._indices()[0]
V, D = inp.weight.shape
m = _memory.zeros(V, D, dtype=torch.float32, device="cpu")
print([l for l in open("/proc/self/smaps_rollup") if "AnonHuge" in l])
w = inp.weight
x = m.index_select(0, rows)
offs = torch.arange(rows.numel())
cases = {
 "index_select w": lambda: w.index_select(0, rows),
 "index_select m(thp)": lambda: m.index_select(0, rows),
 "ebag w": lambda: F.embedding_bag(rows.view(-1, 1), w, mode="sum"),
 "ebag m": lambda: F.embedding_bag(rows.view(-1, 1), m, mode="sum"),
 "index_copy_ m": lambda: m.index_copy_(0, rows, x),
 "index_put_ m": lambda: m.index_put_((rows,), x),
 "index_copy_ w": lambda: w.index_copy_(0, rows, w.index_select(0, rows)) ,
}
res = {}
for _ in range(15):
    for name, fn in cases.items():
        t0 = time.perf_counter(); fn(); res.setdefault(name, []).append(time.perf_counter() - t0)
for k, xx in res.items(): print(f"{k:20s} min {min(xx)*1e3:6.2f} med {statistics.median(xx)*1e3:6.2f}")
ex = rows.unsqueeze(1).expand(-1, D)
m2 = m.clone()
cases = {
 "index_copy_ m": lambda: m.index_copy_(0, rows, x),
 "scatter_ expanded": lambda: m2.scatter_(0, ex, x),
 "scatter_reduce amax": lambda: m2.scatter_reduce_(0, ex, x, "amax", include_self=False),
 "scatter_reduce sum": lambda: m2.scatter_reduce_(0, ex, x, "sum", include_self=False),
 "scatter_add_ exp": lambda: m2.scatter_add_(0, ex, x),
}
res = {}
for _ in range(15):
    for name, fn in cases.items():
        t0 = time.perf_counter(); fn(); res.setdefault(name, []).append(time.perf_counter() - t0)
for k, x2 in res.items(): print(f"{k:20s} min {min(x2)*1e3:6.2f} med {statistics.median(x2)*1e3:6.2f}")
m2.index_copy_(0, rows, x); m3 = m.clone()
m3.scatter_(0, ex, x); print("scatter equal", torch.equal(m3, m2))
