import sys, time, statistics, torch, os
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[4]))
import sparsemb
from bench.harness.workloads import grid, make_inputs
w = grid("quick")[0]
inp = make_inputs(w)
idx, go = inp.indices, inp.grad_output
kinds = sys.argv[1].split(",") if len(sys.argv) > 1 else ["adam"]
def med(ts): return min(ts) * 1e3
def run(name, module, opt, fused=False, steps=25):
    f, b, o = [], [], []
    for i in range(steps + 3):
        t0 = time.perf_counter(); out = module(idx); t1 = time.perf_counter()
        out.backward(go); t2 = time.perf_counter()
        if opt is not None: opt.step(); opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter(); del out
        if i >= 3: f.append(t1 - t0); b.append(t2 - t1); o.append(t3 - t2)
    tot = [x + y + z for x, y, z in zip(f, b, o)]
    print(f"{name:34s} fwd {med(f):6.2f} bwd {med(b):6.2f} opt {med(o):6.2f} total {med(tot):6.2f}", flush=True)
V, D = inp.weight.shape
for kind in kinds:
    m = sparsemb.Embedding(V, D, sparse=True, _weight=inp.weight.clone())
    opt = {"adam": lambda p: sparsemb.optim.SparseAdam(p, lr=1e-3), "sgd": lambda p: sparsemb.optim.SparseSGD(p, lr=0.1),
           "adagrad": lambda p: sparsemb.optim.SparseAdagrad(p, lr=0.1), "rowwise_adagrad": lambda p: sparsemb.optim.RowWiseAdagrad(p, lr=0.1)}[kind]
    run(f"ours {kind}", m, opt(m.parameters())); del m
    m = sparsemb.Embedding(V, D, sparse=True, _weight=inp.weight.clone())
    so = sparsemb.optim.SparseAware(m, sparse=kind, lr=1e-3, fused_backward=True)
    run(f"ours fused {kind}", m, so); del m, so
    if kind != "rowwise_adagrad":
        m = torch.nn.Embedding(V, D, sparse=True, _weight=inp.weight.clone())
        t = {"adam": lambda p: torch.optim.SparseAdam(p, lr=1e-3), "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
             "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1)}[kind]
        run(f"torch sparse {kind}", m, t(m.parameters())); del m
