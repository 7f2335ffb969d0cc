import sys, time, statistics, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
import sparsemb
from sparsemb.torch_backend import optim as O
from bench.harness.workloads import grid, make_inputs
from bench.harness.bag_providers import bag_inputs
inp = make_inputs(grid("quick")[0])
idx, bounds, go = bag_inputs(inp)
offsets = bounds[:-1]
V, D = inp.weight.shape
def variant(blocked):
    def f(weight, rows, values, *, neg_lr, weight_decay, sr_seed):
        if O._skip(weight, rows): return
        for r, vals in O._blocks(rows, values, sr_seed, blocked=blocked):
            g, w = O._grad(weight, r, vals, weight_decay)
            O._add_to_rows_(weight, r, g, neg_lr, sr_seed, gathered=w)
    return f
def index_add(weight, rows, values, *, neg_lr, weight_decay, sr_seed):
    weight.index_add_(0, rows, values, alpha=neg_lr)
variants = {"blocked": variant(True), "one block": variant(False), "index_add_": index_add}
t = sparsemb.EmbeddingBag(V, D, mode="sum", sparse=True, _weight=inp.weight.clone())
opt = sparsemb.optim.SparseSGD(t.parameters(), lr=0.01)
res = {}
for i in range(20):
    for name, fn in variants.items():
        O.sgd_update_ = fn
        t(idx, offsets).backward(go)
        t0 = time.perf_counter(); opt.step(); t1 = time.perf_counter(); opt.zero_grad(set_to_none=True)
        if i >= 3: res.setdefault(name, []).append(t1 - t0)
for k, xx in res.items(): print(f"{k:12s} min {min(xx)*1e3:6.2f} med {statistics.median(xx)*1e3:6.2f}")
