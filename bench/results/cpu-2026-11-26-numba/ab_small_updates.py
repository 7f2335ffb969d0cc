import time, torch, os, statistics, sparsemb, sparsemb.optim
from sparsemb.torch_backend import numba_rows
numba_rows.preload()
def run(U, D, rule):
    V = max(4 * U, 1000)
    emb = sparsemb.Embedding(V, D, sparse=True)
    opt = {"adam": lambda p: sparsemb.optim.SparseAdam(p, lr=1e-3), "sgd": lambda p: sparsemb.optim.SparseSGD(p, lr=0.1),
           "adagrad": lambda p: sparsemb.optim.SparseAdagrad(p, lr=0.1)}[rule](emb.parameters())
    idx = torch.randperm(V)[:U]
    emb(idx).sum().backward(); g = emb.weight.grad
    res = {}
    for flag in ("0", "1", "0", "1"):
        os.environ["SPARSEMB_NUMBA"] = flag
        for _ in range(20): emb.weight.grad = g; opt.step()
        n = 200 if U * D < 1e6 else 30
        ts = []
        for _ in range(n):
            emb.weight.grad = g; t = time.perf_counter(); opt.step(); ts.append(time.perf_counter() - t)
        res[flag] = statistics.median(ts) * 1e6
    return res
for rule in ("adam", "sgd", "adagrad"):
    for U, D in ((16, 16), (64, 64), (256, 64), (1024, 64), (1024, 128), (4096, 128), (16384, 128)):
        r = run(U, D, rule)
        print(f"{rule:8s} U={U:6d} D={D:4d} U*D={U*D:9d}: torch ops {r['0']:8.1f} us  numba {r['1']:8.1f} us")
