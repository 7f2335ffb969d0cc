"""Which rank owns which row of a sharded table, and where that row sits in the owner's shard.

Two layouts. ``RowLayout.blocks(V, W)``: contiguous blocks of ``ceil(V / W)`` rows (the last
ones shorter or empty), the split ``torch.chunk`` and DTensor's ``Shard(0)`` use, so a shard is
a DTensor's local tensor and ``torch.distributed.checkpoint`` reshards it. ``RowLayout.from_map``:
a user-given ``row -> rank`` map (e.g. hot rows spread by frequency); each rank keeps its rows in
ascending order. The map layout holds two (V,) int64 tables on every rank (16 bytes a row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RowLayout:
    """Rows of a ``num_rows``-row table spread over ``world_size`` ranks."""

    num_rows: int
    world_size: int
    block: int  # rows per block (blocks layout); 0 for a map layout
    row_map: Tensor | None = None  # (V,) owner rank of each row (map layout)
    local_of_row: Tensor | None = None  # (V,) position of each row in its owner's shard

    @staticmethod
    def blocks(num_rows: int, world_size: int) -> RowLayout:
        block = -(-num_rows // world_size) if num_rows else 0
        return RowLayout(num_rows, world_size, block)

    @staticmethod
    def from_map(row_map: Tensor, world_size: int, device=None) -> RowLayout:
        if not isinstance(row_map, Tensor) or row_map.dim() != 1 or row_map.is_floating_point():
            raise TypeError("row_map must be a 1-D integer tensor (the owner rank of each row)")
        row_map = row_map.detach().to("cpu", torch.int64)
        if row_map.numel() and (int(row_map.min()) < 0 or int(row_map.max()) >= world_size):
            raise ValueError(f"row_map holds ranks outside [0, {world_size})")
        order = torch.argsort(row_map, stable=True)  # rows grouped by owner, ascending in each
        counts = torch.bincount(row_map, minlength=world_size)
        starts = torch.cumsum(counts, 0) - counts
        local = torch.empty_like(row_map)
        local[order] = torch.arange(row_map.numel()) - starts[row_map[order]]
        return RowLayout(row_map.numel(), world_size, 0, row_map.to(device), local.to(device))

    @property
    def is_blocks(self) -> bool:
        return self.row_map is None

    def rows_of(self, rank: int) -> Tensor:
        """The global ids of ``rank``'s rows, in shard order."""
        if self.is_blocks:
            start = min(rank * self.block, self.num_rows)
            return torch.arange(start, min(start + self.block, self.num_rows))
        return torch.nonzero(self.row_map == rank).view(-1).cpu()

    def num_rows_of(self, rank: int) -> int:
        if self.is_blocks:
            start = min(rank * self.block, self.num_rows)
            return min(start + self.block, self.num_rows) - start
        return int((self.row_map == rank).sum())

    def owner_and_local(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(owner rank, position in the owner's shard) of each (in-range) global row id."""
        if self.is_blocks:
            owner = torch.div(rows, self.block, rounding_mode="floor")
            return owner, rows - owner * self.block
        return self.row_map[rows], self.local_of_row[rows]
