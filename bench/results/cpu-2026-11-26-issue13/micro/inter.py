import sys, time, statistics, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
torch.set_num_threads(int(sys.argv[1]))
from bench.harness.workloads import grid, make_inputs
from sparsemb import _memory
inp = make_inputs(grid("quick")[0])
rows = inp.sparse_grad._indices()[0]
V, D = inp.weight.shape
m = _memory.zeros(V, D, dtype=torch.float32, device="cpu"); v = _memory.zeros(V, D, dtype=torch.float32, device="cpu")
mv = _memory.zeros(V, 2 * D, dtype=torch.float32, device="cpu")
def sep(block=1024):
    for s in range(0, rows.numel(), block):
        r = rows[s:s+block]
        a = m.index_select(0, r); b = v.index_select(0, r); m.index_copy_(0, r, a); v.index_copy_(0, r, b)
def inter(block=1024):
    for s in range(0, rows.numel(), block):
        r = rows[s:s+block]
        a = mv.index_select(0, r); mv.index_copy_(0, r, a)
res = {}
for _ in range(15):
    for name, fn in (("separate", sep), ("interleaved", inter), ("interleaved 512", lambda: inter(512))):
        t0 = time.perf_counter(); fn(); res.setdefault(name, []).append(time.perf_counter() - t0)
for k, x in res.items(): print(f"{k:20s} min {min(x)*1e3:6.2f} med {statistics.median(x)*1e3:6.2f}")
