"""Launch settings shared by every kernel: how much of a row, and how many rows, a program holds.

Small embedding dims pack several rows into one program so each moves a useful tile; wide rows
loop over column slices of at most ``max_block_d``. ``num_warps`` grows with the tile so each
thread holds at most ``ELEMENTS_PER_THREAD`` elements (with their 64-bit addresses): that keeps
every kernel under the register file without spilling (``scripts/sm90_compile.py`` checks it).
One helper, so every kernel sizes its tiles the same way and a change of policy happens in one
place.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch
import triton

ELEMENTS_PER_THREAD = 16  # tile elements one thread holds: value + int64 address each
MAX_WARPS = 8


class Tile(NamedTuple):
    block_d: int  # columns per step, a power of two
    rows: int  # rows (or segments, chunks) per program
    num_warps: int  # warps per program, sized to the tile


def warps_for(elements: int, per_thread: int = ELEMENTS_PER_THREAD) -> int:
    """Warps for a tile of ``elements`` values, ``per_thread`` per thread, 1 to 8 warps."""
    return max(1, min(MAX_WARPS, triton.next_power_of_2(elements) // (32 * per_thread)))


def tile_for(
    dim: int, *, max_block_d: int, elements: int, max_rows: int = 1 << 30,
    per_thread: int = ELEMENTS_PER_THREAD,
) -> Tile:
    """A power-of-two column slice of ``dim`` (at most ``max_block_d``), the rows that fill
    about ``elements`` elements per program (between 1 and ``max_rows``), and the warps that
    give each thread about ``per_thread`` elements (fewer for kernels with more streams)."""
    block_d = min(triton.next_power_of_2(max(dim, 1)), max_block_d)
    rows = max(1, min(max_rows, elements // block_d))
    return Tile(block_d, rows, warps_for(block_d * rows, per_thread))



def on_device_of(arg: int):
    """Run the decorated launcher on the GPU of its ``arg``-th argument: a table on cuda:1 must
    not launch on the current device (cuda:0). A no-op for CPU tensors (the interpreter)."""

    def decorate(launcher):
        @functools.wraps(launcher)
        def run(*args, **kwargs):
            tensor = args[arg]
            guard = torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
            with guard:
                return launcher(*args, **kwargs)

        return run

    return decorate
