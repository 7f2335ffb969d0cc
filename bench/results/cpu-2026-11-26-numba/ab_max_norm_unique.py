import time, torch, statistics, numpy as np, numba
from sparsemb import _memory
from sparsemb.torch_backend import renorm as R, gather as G

@numba.njit(cache=True, nogil=True)
def first_occurrences(indices, seen, out):
    n = 0
    for i in range(indices.shape[0]):
        r = indices[i]
        w = r >> 3
        b = np.uint8(1 << (r & 7))
        if (seen[w] & b) == 0:
            seen[w] |= b
            out[n] = r
            n += 1
    for k in range(n):
        seen[out[k] >> 3] = 0
    return n

V, D, N = 1_000_000, 128, 65536
w = _memory.empty(V, D, dtype=torch.float32, device="cpu").normal_()
_memory.collapse_to_huge_pages(w)
rng = np.random.default_rng(0)
idx = torch.from_numpy((rng.zipf(1.2, N) - 1) % V).long()
for _ in range(3): R.gather_renormed_(w, idx, 1.0, 2.0)
seen = np.zeros(V // 8 + 1, np.uint8)
def new(indices, max_norm=1.0, p=2.0):
    out = G.gather(w, indices)
    buf = np.empty(indices.shape[0], np.int64)
    n = first_occurrences(indices.numpy(), seen, buf)
    uniq = torch.from_numpy(buf[:n])
    rows = w.index_select(0, uniq)
    over = R.row_norms(rows, p) > max_norm
    assert not bool(over.any())
    return out
new(idx)
res = {"plain": [], "current": [], "new": [], "unique_only": []}
for rep in range(30):
    t = time.perf_counter(); o = G.gather(w, idx); res["plain"].append(time.perf_counter() - t); del o
    t = time.perf_counter(); o = R.gather_renormed_(w, idx, 1.0, 2.0); res["current"].append(time.perf_counter() - t); del o
    t = time.perf_counter(); o = new(idx); res["new"].append(time.perf_counter() - t); del o
    buf = np.empty(N, np.int64)
    t = time.perf_counter(); first_occurrences(idx.numpy(), seen, buf); res["unique_only"].append(time.perf_counter() - t)
for k, x in res.items():
    print(f"{k:12s} median {statistics.median(x[3:])*1e3:6.2f} ms  min {min(x[3:])*1e3:6.2f}")
