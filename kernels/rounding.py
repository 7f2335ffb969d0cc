"""Correct float32 -> 16-bit rounding shared by the kernels that write tables or gradients."""

import triton
import triton.language as tl


@triton.jit
def round_nearest(x, out_ty: tl.constexpr):
    """float32 ``x`` rounded to nearest-even in ``out_ty``.

    bfloat16 is rounded on the bit pattern: Triton's interpreter (3.9) truncates float32 ->
    bfloat16 casts, even with ``fp_downcast_rounding="rtne"``; integer arithmetic gives the same
    correctly rounded result on the GPU and under the interpreter.
    """
    if tl.constexpr(out_ty == tl.bfloat16):
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, (bits >> 16) | 0x40, rounded)  # NaN stays a (quiet) NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(out_ty)
