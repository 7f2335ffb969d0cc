import time, torch, statistics, numpy as np, numba
from numba import njit, prange
from sparsemb.torch_backend import optim as O
from sparsemb import _memory

@njit(parallel=True)
def moments_pass(M, Vs, rows, G, b1c, b2c, m_out, v_out):
    U, D = G.shape
    for i in prange(U):
        r = rows[i]
        for j in range(D):
            g = G[i, j]
            m = M[r, j]
            m = m + (g - m) * b1c
            M[r, j] = m
            m_out[i, j] = m
            v = Vs[r, j]
            v = v + (g * g - v) * b2c
            Vs[r, j] = v
            v_out[i, j] = v

@njit(parallel=True)
def weight_pass(W, rows, m_new, denom, nss, decay, use_decay):
    U, D = m_new.shape
    for i in prange(U):
        r = rows[i]
        for j in range(D):
            upd = (m_new[i, j] / denom[i, j]) * nss
            w = W[r, j]
            if use_decay:
                w = w * decay
            W[r, j] = w + upd

def adam_nb(weight, rows, values, exp_avg, exp_avg_sq, *, one_minus_beta1, one_minus_beta2, eps, neg_step_size, decay, sr_seed):
    f = np.float32
    U, D = values.shape
    m_new = torch.empty(U, D); v_new = torch.empty(U, D)
    moments_pass(exp_avg.numpy(), exp_avg_sq.numpy(), rows.numpy(), values.numpy(), f(one_minus_beta1), f(one_minus_beta2), m_new.numpy(), v_new.numpy())
    denom = v_new.sqrt_().add_(eps)
    weight_pass(weight.numpy(), rows.numpy(), m_new.numpy(), denom.numpy(), f(neg_step_size), f(decay), decay != 1)

torch.manual_seed(0)
V, D, U = 1_000_000, 128, 10490
mk = lambda: _memory.zeros(V, D, dtype=torch.float32, device="cpu")
weight = mk().normal_(); m = mk().normal_().abs_(); v = mk().normal_().abs_()
print([_memory.collapse_to_huge_pages(t) for t in (weight, m, v)])
perms = [torch.randperm(V)[:U].sort().values for _ in range(8)]
vals = torch.randn(U, D)
kw = dict(one_minus_beta1=0.1, one_minus_beta2=0.001, eps=1e-8, neg_step_size=-1e-3, decay=1.0, sr_seed=None)
t = time.perf_counter(); adam_nb(weight, perms[0], vals, m, v, **kw); print("compile+run", time.perf_counter() - t)
for decay in (1.0, 0.999):
    kw["decay"] = decay
    w1, m1, v1 = weight.clone(), m.clone(), v.clone()
    w2, m2, v2 = weight.clone(), m.clone(), v.clone()
    for s in range(3):
        O.adam_update_(w1, perms[s], vals, m1, v1, **kw); adam_nb(w2, perms[s], vals, m2, v2, **kw)
    print("decay", decay, "same bits:", torch.equal(w1, w2), torch.equal(m1, m2), torch.equal(v1, v2))
kw["decay"] = 1.0
variants = {"current": O.adam_update_, "numba": adam_nb}
res = {k: [] for k in variants}
for rep in range(24):
    for k, f in variants.items():
        rows = perms[(rep * 3 + len(k)) % 8]
        t = time.perf_counter(); f(weight, rows, vals, m, v, **kw); res[k].append(time.perf_counter() - t)
for k, x in res.items():
    x = x[2:]
    print(f"{k:10s} median {statistics.median(x)*1e3:6.2f} ms  min {min(x)*1e3:6.2f}")
