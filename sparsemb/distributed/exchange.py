"""The collectives of a sharded lookup, all built on ``all_to_all_single`` (gloo and NCCL).

A lookup runs three exchanges: the per-destination counts (with a "bad index" flag, so a rank
that must raise tells every other rank in the same collective and no rank is left waiting in
the next one), the indices, and the rows (whose backward sends the gradient rows back to the
owners in the reverse direction).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def exchange_counts(
    send_counts: Tensor, bad: bool, group: dist.ProcessGroup | None
) -> tuple[list[int], list[int]]:
    """Swap row counts with every rank: (counts this rank receives, ranks that saw a bad index).

    ``send_counts[j]``: how many rows this rank asks rank j for. The flag rides along in the same
    message (one collective per lookup, not two).
    """
    world = send_counts.numel()
    message = torch.stack([send_counts, torch.full_like(send_counts, int(bad))], dim=1)
    received = torch.empty_like(message)
    dist.all_to_all_single(received, message.contiguous(), group=group)
    received = received.cpu()
    recv_counts = received[:, 0].tolist()
    bad_ranks = [r for r in range(world) if int(received[r, 1])]
    return recv_counts, bad_ranks


def exchange(
    tensor: Tensor, send_splits: list[int], recv_splits: list[int], group: dist.ProcessGroup | None
) -> Tensor:
    """``all_to_all_single`` along dim 0: rank j gets ``send_splits[j]`` rows of ``tensor``."""
    out = tensor.new_empty((sum(recv_splits), *tensor.shape[1:]))
    dist.all_to_all_single(out, tensor.contiguous(), recv_splits, send_splits, group=group)
    return out


class ExchangeRows(torch.autograd.Function):
    """``exchange`` with its adjoint as backward: gradient rows travel back to where the rows
    came from, multiplied by ``grad_scale`` (1/world for averaged losses)."""

    @staticmethod
    def forward(ctx, rows, send_splits, recv_splits, group, grad_scale):
        ctx.splits = (send_splits, recv_splits)
        ctx.group, ctx.grad_scale = group, grad_scale
        return exchange(rows, send_splits, recv_splits, group)

    @staticmethod
    def backward(ctx, grad):
        send_splits, recv_splits = ctx.splits
        if ctx.grad_scale != 1.0:
            grad = grad * ctx.grad_scale
        return exchange(grad, recv_splits, send_splits, ctx.group), None, None, None, None
