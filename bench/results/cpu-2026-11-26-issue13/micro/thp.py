import sys, time, statistics, torch, ctypes
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
from bench.harness.workloads import grid, make_inputs
inp = make_inputs(grid("quick")[0])
idx, w = inp.indices, inp.weight
libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
HUGE = 2 << 20
def advise(t):
    p = t.data_ptr(); n = t.numel() * t.element_size()
    start = (p + HUGE - 1) // HUGE * HUGE; end = (p + n) // HUGE * HUGE
    if end > start: return libc.madvise(start, end - start, 14)
def t(name, fn, n=20):
    for _ in range(4): fn()
    ts=[]
    for _ in range(n):
        t0=time.perf_counter(); r = fn(); del r; ts.append(time.perf_counter()-t0)
    print(f"{name:40s} {statistics.median(ts)*1e3:7.3f} ms", flush=True)
t("index_select", lambda: w.index_select(0, idx))
def huge():
    out = torch.empty(idx.numel(), w.shape[1]); advise(out)
    return torch.index_select(w, 0, idx, out=out)
t("empty+madvise+index_select", huge)
print(torch.equal(huge(), w.index_select(0, idx)))
t("empty only", lambda: torch.empty(idx.numel(), w.shape[1]))
t("empty+madvise", lambda: advise(torch.empty(idx.numel(), w.shape[1])))
def touch():
    out = torch.empty(idx.numel(), w.shape[1]); advise(out); out.fill_(0); return out
t("empty+madvise+fill", touch)
t("empty+fill", lambda: torch.empty(idx.numel(), w.shape[1]).fill_(0))
sg = inp.sparse_grad
rows = sg._indices()[0]
def gathers(w, m, v, block=1024):
    for s in range(0, rows.numel(), block):
        r = rows[s:s+block]
        ww = w.index_select(0, r); mm = m.index_select(0, r); vv = v.index_select(0, r)
        w.index_copy_(0, r, ww); m.index_copy_(0, r, mm); v.index_copy_(0, r, vv)
def table(h):
    x = torch.empty_like(w)
    if h: advise(x)
    x.copy_(w); return x
for h in [False, True]:
    tabs = [table(h) for _ in range(3)]
    t(f"gathers+scatters hugepages={h}", lambda: gathers(*tabs))
    t(f"gathers+scatters hugepages={h} block 4096", lambda: gathers(*tabs, block=4096))
    del tabs
print(open("/proc/meminfo").read().split("AnonHugePages")[1][:30])
