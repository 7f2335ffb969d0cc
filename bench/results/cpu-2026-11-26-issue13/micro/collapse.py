import sys, time, statistics, torch, ctypes
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
torch.set_num_threads(int(sys.argv[1]))
from bench.harness.workloads import grid, make_inputs
from sparsemb import _memory
inp = make_inputs(grid("quick")[0])
rows = inp.sparse_grad._indices()[0]
w = inp.weight.clone()
def huge(): return [l for l in open("/proc/self/smaps_rollup") if "AnonHuge" in l]
print(huge())
def bench(label):
    x = w.index_select(0, rows)
    res = {}
    for _ in range(10):
        for name, fn in (("gather", lambda: w.index_select(0, rows)), ("scatter", lambda: w.index_copy_(0, rows, x))):
            t0 = time.perf_counter(); fn(); res.setdefault(name, []).append(time.perf_counter() - t0)
    print(label, {k: round(min(v)*1e3, 2) for k, v in res.items()})
bench("before")
madvise = _memory._madvise()
st = w.untyped_storage(); p = st.data_ptr(); n = st.nbytes()
a = (p + (2<<20) - 1) // (2<<20) * (2<<20); b = (p + n) // (2<<20) * (2<<20)
t0 = time.perf_counter()
r = madvise(a, b - a, 25)
print("collapse rc", r, ctypes.get_errno(), "s", time.perf_counter() - t0, huge())
bench("after")
