"""Workloads of the benchmark: what is looked up, and its inputs.

- ``Workload``: table size, indices per step, index distribution, dtype;
- ``make_inputs`` builds its inputs from a fixed seed (normal weights, Zipf(1.2) indices over a
  shuffled vocabulary or uniform ones, a normal output gradient), so nothing is timed on zeros;
  ``zipf_indices`` is the one Zipf generator of the benchmarks;
- ``grid`` lists the workloads of a sweep (smoke, quick, full).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NUM_INDICES = 65_536
ZIPF_A = 1.2
SEED = 0

@dataclass(frozen=True)
class Workload:
    """One benchmark input: a (V, D) table looked up with N indices per step."""

    num_embeddings: int
    embedding_dim: int
    num_indices: int = NUM_INDICES
    distribution: str = "zipf"  # "zipf" (a = 1.2 over a shuffled vocabulary) or "uniform"
    dtype: str = "float32"
    seed: int = SEED

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def table_bytes(self) -> int:
        return self.num_embeddings * self.embedding_dim * self.element_size

    def label(self) -> str:
        return (
            f"V={human_count(self.num_embeddings)} D={self.embedding_dim} "
            f"N={self.num_indices:,} {self.distribution} {self.dtype}"
        )

    def slug(self) -> str:
        return (
            f"V{human_count(self.num_embeddings)}-D{self.embedding_dim}-N{self.num_indices}-"
            f"{self.distribution}-{self.dtype}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def human_count(n: int) -> str:
    """10**6 -> '1e6', 65536 -> '65536': exact powers of ten in short form."""
    if n >= 10 and 10 ** round(math.log10(n)) == n:
        return f"1e{round(math.log10(n))}"
    return str(n)


@dataclass
class Inputs:
    """The tensors of one workload, on the benchmark device."""

    workload: Workload
    device: torch.device
    weight: Tensor  # (V, D) initial weights; each provider clones it
    indices: Tensor  # (N,) int64
    grad_output: Tensor  # (N, D) gradient fed to backward
    unique_rows: int

    _offsets: Tensor | None = None
    _sparse_grad: Tensor | None = None

    @property
    def offsets(self) -> Tensor:
        """FBGEMM bag offsets for pooling NONE: N bags of one index each."""
        if self._offsets is None:
            n = self.indices.numel()
            self._offsets = torch.arange(n + 1, dtype=torch.int64, device=self.device)
        return self._offsets

    @property
    def sparse_grad(self) -> Tensor:
        """The coalesced (V, D) sparse gradient of one step, for the optimizer-only group."""
        if self._sparse_grad is None:
            v, d = self.weight.shape
            grad = torch.sparse_coo_tensor(
                self.indices.unsqueeze(0), self.grad_output, (v, d), check_invariants=False
            )
            self._sparse_grad = grad.coalesce()
        return self._sparse_grad


def zipf_indices(num_embeddings: int, n: int, a: float, generator: torch.Generator) -> Tensor:
    """``n`` draws of Zipf(a) ranks truncated to the vocabulary, mapped through a random shuffle.

    Rank r in 1..V has probability proportional to r**-a; the shuffle spreads the hot rows over
    the table as real vocabularies do (rank order is not row order).
    """
    ranks = torch.arange(1, num_embeddings + 1, dtype=torch.float64)
    cdf = torch.cumsum(ranks.pow_(-a), 0)
    u = torch.rand(n, dtype=torch.float64, generator=generator) * cdf[-1]
    rank = torch.searchsorted(cdf, u).clamp_(max=num_embeddings - 1)
    del cdf, ranks
    perm = torch.randperm(num_embeddings, generator=generator)
    return perm[rank]


def make_indices(workload: Workload) -> Tensor:
    g = torch.Generator().manual_seed(workload.seed)
    v, n = workload.num_embeddings, workload.num_indices
    if workload.distribution == "zipf":
        return zipf_indices(v, n, ZIPF_A, g)
    if workload.distribution == "uniform":
        return torch.randint(0, v, (n,), generator=g)
    raise ValueError(f"unknown distribution {workload.distribution!r}")


def make_inputs(workload: Workload, device: torch.device | str = "cpu") -> Inputs:
    """Inputs of ``workload`` from its seed: normal weights, indices, normal output gradient."""
    device = torch.device(device)
    dtype = workload.torch_dtype
    v, d, n = workload.num_embeddings, workload.embedding_dim, workload.num_indices
    indices = make_indices(workload)
    unique_rows = int(torch.unique(indices).numel())
    gen = torch.Generator(device=device).manual_seed(workload.seed + 1)
    weight = torch.empty(v, d, dtype=dtype, device=device)
    chunk = max(1, (1 << 24) // max(d, 1))  # fill in slices: no float32 copy of a bf16 table
    for start in range(0, v, chunk):
        rows = weight[start : start + chunk]
        rows.copy_(torch.randn(rows.shape, generator=gen, device=device, dtype=torch.float32))
    grad_output = (
        torch.randn(n, d, generator=gen, device=device, dtype=torch.float32) * 0.01
    ).to(dtype)
    return Inputs(workload, device, weight, indices.to(device), grad_output, unique_rows)


FULL_V = (10**5, 10**6, 10**7)
FULL_D = (64, 128, 256)
FULL_DIST = ("zipf", "uniform")
FULL_DTYPES = ("float32", "bfloat16")


def grid(mode: str, dtypes: Iterable[str] | None = None) -> list[Workload]:
    """Workloads of a sweep: "smoke" (tiny), "quick" (the targets' sizes) or "full"."""
    if mode == "smoke":
        dts = tuple(dtypes or ("float32",))
        return [Workload(v, 16, 256, "zipf", dt) for dt in dts for v in (1000,)]
    if mode == "quick":
        dts = tuple(dtypes or ("float32",))
        # the targets' size first: a run cut short by a time limit still has it
        return [Workload(v, 128, NUM_INDICES, "zipf", dt) for dt in dts for v in (10**6, 10**5)]
    if mode == "full":
        dts = tuple(dtypes or FULL_DTYPES)
        return [
            Workload(v, d, NUM_INDICES, dist, dt)
            for dt in dts
            for dist in FULL_DIST
            for d in FULL_D
            for v in FULL_V
        ]
    raise ValueError(f"unknown grid {mode!r}")

