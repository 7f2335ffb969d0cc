"""Launch settings shared by every kernel: how much of a row, and how many rows, a program holds.

Small embedding dims pack several rows into one program so each moves a useful tile; wide rows
loop over column slices of at most ``max_block_d``. One helper, so every kernel sizes its tiles
the same way and a change of policy happens in one place.
"""

from __future__ import annotations

from typing import NamedTuple

import triton


class Tile(NamedTuple):
    block_d: int  # columns per step, a power of two
    rows: int  # rows (or segments, chunks) per program


def tile_for(dim: int, *, max_block_d: int, elements: int, max_rows: int = 1 << 30) -> Tile:
    """A power-of-two column slice of ``dim`` (at most ``max_block_d``) and the rows that fill
    about ``elements`` elements per program, between 1 and ``max_rows``."""
    block_d = min(triton.next_power_of_2(max(dim, 1)), max_block_d)
    return Tile(block_d, max(1, min(max_rows, elements // block_d)))
