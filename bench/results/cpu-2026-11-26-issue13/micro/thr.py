import sys, time, statistics, torch, threading
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
from bench.harness.workloads import grid, make_inputs
from sparsemb.torch_backend import optim as O
from sparsemb import _memory
inp = make_inputs(grid("quick")[0])
sg = inp.sparse_grad
rows, vals = sg._indices()[0], sg._values()
w = inp.weight.clone(); _memory.collapse_to_huge_pages(w)
m = _memory.zeros(*w.shape, dtype=w.dtype, device="cpu"); v = _memory.zeros(*w.shape, dtype=w.dtype, device="cpu")
w2, m2, v2 = w.clone(), m.clone(), v.clone()
kw = dict(one_minus_beta1=0.1, one_minus_beta2=0.001, eps=1e-8, neg_step_size=-1e-3, decay=1.0, sr_seed=None)
def init(): torch.set_num_threads(1)
pool = ThreadPoolExecutor(2, initializer=init)
def threaded(w, m, v, nblk=int(sys.argv[1])):
    n = rows.numel(); step = (n + nblk - 1) // nblk
    futs = [pool.submit(O.adam_update_, w, rows[s:s+step], vals[s:s+step], m, v, **kw) for s in range(0, n, step)]
    for f in futs: f.result()
res = {}
for i in range(20):
    for name, fn in (("omp", lambda: O.adam_update_(w2, rows, vals, m2, v2, **kw)), ("threads", lambda: threaded(w, m, v))):
        t0 = time.perf_counter(); fn(); 
        if i >= 3: res.setdefault(name, []).append(time.perf_counter() - t0)
for k, xx in res.items(): print(f"{k:10s} min {min(xx)*1e3:6.2f} med {statistics.median(xx)*1e3:6.2f}")
print("bits equal", torch.equal(w, w2), torch.equal(m, m2), torch.equal(v, v2), torch.get_num_threads())
