"""The compiled row passes of ``numba_rows`` (imported only there, and only where Numba is).

Each pass walks the touched rows once, both threads sharing them (``prange``), and does in
registers what the torch-op path does with one op per step: plain IEEE ``+ - * /`` in the
arrays' dtype, in torch's order. Numba contracts nothing into a fused multiply-add without
``fastmath``, so each operation rounds exactly as torch's separate ops do.

The max_norm lookup's pass (``gather_over``) copies each looked-up row and sums its squares
in one vector register the way torch's own CPU norm kernel does (``_copy_and_sum_squares``,
written in LLVM IR: Numba does not vectorize that loop by itself), so the norms are torch's.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_jit = numba.njit(parallel=True, cache=True, nogil=True)


@_jit
def adam_moments(exp_avg, exp_avg_sq, rows, grad, one_minus_beta1, one_minus_beta2,
                 new_avg, new_avg_sq):
    """m += (g - m) * (1 - beta1); v += (g * g - v) * (1 - beta2) on the touched rows, written
    back and into the compact (U, D) ``new_avg`` / ``new_avg_sq``."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(grad.shape[1]):
            g = grad[i, j]
            m = exp_avg[r, j]
            m = m + (g - m) * one_minus_beta1
            exp_avg[r, j] = m
            new_avg[i, j] = m
            v = exp_avg_sq[r, j]
            v = v + (g * g - v) * one_minus_beta2
            exp_avg_sq[r, j] = v
            new_avg_sq[i, j] = v


@_jit
def add_scaled_ratio(weight, rows, numer, denom, scale, decay, use_decay):
    """w = w * decay + (numer / denom) * scale on the touched rows (decay only if use_decay)."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(numer.shape[1]):
            w = weight[r, j]
            if use_decay:
                w = w * decay
            weight[r, j] = w + (numer[i, j] / denom[i, j]) * scale


@_jit
def add_squares(state_sum, rows, grad, new_sum):
    """sum += g * g on the touched rows, written back and into the compact ``new_sum``."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(grad.shape[1]):
            g = grad[i, j]
            total = state_sum[r, j] + g * g
            state_sum[r, j] = total
            new_sum[i, j] = total


@_jit
def gather_rows(table, rows, out):
    """out[i] = table[rows[i]]."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(table.shape[1]):
            out[i, j] = table[r, j]


@_jit
def scatter_rows(table, rows, values):
    """table[rows[i]] = values[i] (rows unique)."""
    for i in prange(rows.shape[0]):
        r = rows[i]
        for j in range(values.shape[1]):
            table[r, j] = values[i, j]


@intrinsic
def _copy_and_sum_squares(typingctx, src, dst, vector_bytes):
    """Copy the contiguous row ``src`` into ``dst`` and return the sum of its squares as torch's
    vectorized CPU norm adds them (``norm_kernel_tensor_iterator_impl``, p=2, last dim): one
    ``vector_bytes``-wide register of lanes, each lane adding ``x * x`` (a multiply, then an
    add: no fused multiply-add) for every vector of the row in order, then the lanes added
    left to right. The elements past the last whole vector (the row's tail) are left to the
    caller, neither copied nor summed: how torch adds them depends on how it was compiled."""
    if not (
        isinstance(src, types.Array) and isinstance(dst, types.Array)
        and src.ndim == dst.ndim == 1 and src.layout == dst.layout == "C"
        and src.dtype == dst.dtype and src.dtype in (types.float32, types.float64)
        and isinstance(vector_bytes, types.IntegerLiteral)
    ):
        return None
    item_bytes = src.dtype.bitwidth // 8
    lanes = vector_bytes.literal_value // item_bytes

    def codegen(context, builder, signature, args):
        source = context.make_array(signature.args[0])(context, builder, args[0])
        target = context.make_array(signature.args[1])(context, builder, args[1])
        vector = ir.VectorType(context.get_value_type(signature.args[0].dtype), lanes)
        length = builder.extract_value(source.shape, 0)
        width = ir.Constant(length.type, lanes)
        acc = cgutils.alloca_once_value(builder, ir.Constant(vector, [0.0] * lanes))
        with cgutils.for_range(builder, builder.udiv(length, width)) as loop:
            offset = builder.mul(loop.index, width)
            at = builder.bitcast(builder.gep(source.data, [offset]), vector.as_pointer())
            x = builder.load(at, align=item_bytes)
            to = builder.bitcast(builder.gep(target.data, [offset]), vector.as_pointer())
            builder.store(x, to, align=item_bytes)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(x, x)), acc)
        sums = builder.load(acc)
        lane = [ir.Constant(ir.IntType(32), j) for j in range(lanes)]
        total = builder.extract_element(sums, lane[0])
        for j in range(1, lanes):
            total = builder.fadd(total, builder.extract_element(sums, lane[j]))
        return total

    return src.dtype(src, dst, vector_bytes), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's fma), as a compiler contracts torch's scalar tail."""
    if not (a == b == c and a in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        kind = args[0].type
        name = "llvm.fma.f32" if kind == ir.FloatType() else "llvm.fma.f64"
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(kind, [kind, kind, kind]), name
        )
        return builder.call(fma, args)

    return a(a, b, c), codegen


def _gather_over_pass(vector_bytes, plain_tail):
    """The max_norm lookup's pass summing in ``vector_bytes``-wide registers, then the row's
    tail one element at a time: its first ``plain_tail`` elements squared and added (two
    roundings), the rest with a fused multiply-add (``NO_TAIL``: rows are whole vectors, and
    the pass has no tail loop). How torch's build adds the tail decides which (a compiler
    contracts the scalar loop, but may square a few elements in a vector register first). Both
    are compile-time constants here (Numba's ``literally`` would re-run its compiler passes on
    every call)."""

    def gather_over(table, rows, out, max_norm, norms, over):
        """out[i] = table[rows[i]]; norms[i] = its 2-norm, as torch computes it with
        ``vector_bytes``-wide vectors; over[i] = norms[i] > max_norm, compared in float64 as
        torch's CPU renorm compares it (NaN: never over). Returns (rows over, rows outside the
        table: those are neither copied nor measured)."""
        dim = table.shape[1]
        body = dim - dim % (vector_bytes // table.itemsize)
        outside = 0
        count = 0
        for i in prange(rows.shape[0]):
            r = rows[i]
            if r < 0 or r >= table.shape[0]:
                outside += 1
            else:
                src, dst = table[r], out[i]
                total = _copy_and_sum_squares(src, dst, vector_bytes)
                if plain_tail >= 0:  # a constant: rows without a tail compile without the loop
                    for j in range(body, dim):
                        x = src[j]
                        dst[j] = x
                        total = total + x * x if j - body < plain_tail else _fma(x, x, total)
                norm = np.sqrt(total)
                norms[i] = norm
                over[i] = np.float64(norm) > max_norm
                count += over[i]
        return count, outside

    return _jit(gather_over)


NO_TAIL, ALL_PLAIN = -1, 1 << 30
GATHER_OVER = {  # (register bytes, plain tail elements) -> pass; 256- and 512-bit registers
    (width, plain_tail): _gather_over_pass(width, plain_tail)
    for width in (32, 64)
    for plain_tail in (NO_TAIL, ALL_PLAIN, 0, 4)
}
