"""Session 5 device probe (run from the repository root on the GPU machine; output: probe.txt):
torch 2.11's CUDA behaviours that run 3's failures raised. Kept as it ran, before the fix."""
import torch, torch.nn.functional as F, sparsemb
dev = "cuda"
print("== empty indices, torch CUDA backward")
for sparse in (False, True):
    for sfreq in (False, True):
        w = torch.randn(7, 3, device=dev, requires_grad=True)
        try:
            F.embedding(torch.empty(0, dtype=torch.long, device=dev), w, scale_grad_by_freq=sfreq, sparse=sparse).sum().backward()
            torch.cuda.synchronize(); r = "ok"
        except Exception as e:
            r = repr(e)[:80]
        print(f"sparse={sparse} scale_grad_by_freq={sfreq}: {r}")
print("== dense.add_(coalesced sparse) on a transposed CUDA table")
for nnz in (1, 2, 3):
    for coalesced in (True, False):
        base = torch.randn(17, 5)
        g = torch.sparse_coo_tensor(torch.arange(nnz).unsqueeze(0), torch.randn(nnz, 17), (5, 17), is_coalesced=coalesced)
        want = base.t().clone().add_(g)
        w = base.to(dev).t()
        w.add_(g.to(dev))
        print(f"nnz={nnz} coalesced={coalesced}: exact={torch.equal(w.cpu(), want)}")
print("== sparsemb grad flag on a transposed CUDA table")
for n in (1, 2):
    w = torch.randn(17, 5, device=dev).t().requires_grad_()
    idx = torch.arange(n, device=dev)
    out = sparsemb.embedding(idx, w, sparse=True)
    (g,) = torch.autograd.grad(out, w, torch.ones_like(out))
    out = sparsemb.embedding(idx, w, sparse=True); out.backward(torch.ones_like(out))
    print(f"n={n}: autograd.grad coalesced={g.is_coalesced()}, weight.grad coalesced={w.grad.is_coalesced()}")
    emb = torch.nn.Embedding(5, 17, sparse=True).to(dev)
    with torch.no_grad(): emb.weight = torch.nn.Parameter(torch.randn(17, 5, device=dev).t())
    ref = emb.weight.detach().cpu().clone()
    opt = torch.optim.SGD(emb.parameters(), lr=1.0)
    emb(idx).sum().backward(); opt.step()
    ref[:n] -= 1
    print(f"   torch nn.Embedding transposed + SGD, {n} row(s): exact={torch.equal(emb.weight.detach().cpu(), ref)}")
    ours = sparsemb.Embedding(5, 17, sparse=True).to(dev)
    with torch.no_grad(): ours.weight = torch.nn.Parameter(torch.randn(17, 5, device=dev).t())
    ref = ours.weight.detach().cpu().clone()
    opt = torch.optim.SGD(ours.parameters(), lr=1.0)
    ours(idx).sum().backward(); opt.step()
    ref[:n] -= 1
    print(f"   sparsemb transposed + torch SGD, {n} row(s): exact={torch.equal(ours.weight.detach().cpu(), ref)}")
