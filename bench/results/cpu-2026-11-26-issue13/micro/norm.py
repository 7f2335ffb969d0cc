import torch, time, statistics
torch.manual_seed(0)
x = torch.randn(2048, 128)
def t(name, fn):
    for _ in range(5): fn()
    ts = []
    for _ in range(200):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    print(f"{name:30s} {min(ts)*1e6:7.1f} us")
ref = torch.linalg.vector_norm(x, dim=1)
t("vector_norm", lambda: torch.linalg.vector_norm(x, dim=1))
t("norm(p=2)", lambda: x.norm(p=2, dim=1))
t("mul sum sqrt", lambda: (x * x).sum(1).sqrt())
t("bmm dot", lambda: torch.bmm(x.unsqueeze(1), x.unsqueeze(2)).view(-1).sqrt())
t("einsum", lambda: torch.einsum("ij,ij->i", x, x).sqrt())
for name, v in (("norm", x.norm(p=2, dim=1)), ("mulsum", (x*x).sum(1).sqrt()), ("bmm", torch.bmm(x.unsqueeze(1), x.unsqueeze(2)).view(-1).sqrt())):
    print(name, torch.equal(v, ref), (v - ref).abs().max().item())
# per-row layout independence
big = torch.randn(10000, 128)
full = torch.linalg.vector_norm(big, dim=1)
parts = torch.cat([torch.linalg.vector_norm(big[s:s+2048], dim=1) for s in range(0, 10000, 2048)])
sub = torch.linalg.vector_norm(big[[5, 77, 9000]], dim=1)
print("layout independent", torch.equal(full, parts), torch.equal(full[[5, 77, 9000]], sub))
