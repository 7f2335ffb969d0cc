"""Count the host syncs and the launches of a piece of code, on CPU, through torch's dispatcher.

A ``TorchDispatchMode`` sees every aten op. Ops that make the host wait for the device on CUDA
are counted as syncs: ``_local_scalar_dense`` (``int()``, ``bool()``, ``.item()``), ops whose
output size depends on values (``nonzero``, ``unique*``, ``masked_select``, indexing with a
boolean mask, ``repeat_interleave`` without ``output_size``), copies between the GPU and the
host, and ``Tensor.tolist`` (which reads CPU values without the dispatcher). Every other op
that computes something counts as one launch; views, allocations and metadata ops launch
nothing. Triton launches are counted by wrapping the launch entry point of the interpreter and
of the real runtime; the aten ops the interpreter itself runs to move data are not counted.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2",
            "unique_consecutive", "unique_dim", "unique_dim_consecutive"}
FREE_OPS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach",
            "lift_fresh", "_coalesced_", "_sparse_coo_tensor_with_dims_and_tensors",
            "sparse_resize_and_clear_", "is_coalesced", "_indices", "_values", "indices",
            "values", "sym_size", "sym_stride", "sym_numel", "dim", "is_same_size",
            "record_stream", "set_", "resize_", "_has_compatible_shallow_copy_type",
            "sparse_dim", "dense_dim", "_record_function_enter_new", "_record_function_exit"}


def _is_sync(func, args, kwargs) -> bool:
    name = func._schema.name.split("::")[-1]
    if name in SYNC_OPS:
        return True
    if name in ("_to_copy", "copy_") and len(args) > 0 and isinstance(args[0], torch.Tensor):
        # a copy between a GPU and the host: (src, ...) for _to_copy, (dst, src) for copy_
        src, dst_device = (args[0], kwargs.get("device")) if name == "_to_copy" else (
            args[1], args[0].device)
        return (src.device.type == "cuda") != (torch.device(dst_device or src.device).type
                                               == "cuda")
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None)
    if name in ("index", "index_put", "index_put_", "_index_put_impl_") and len(args) > 1:
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ())
    return False


class StepCounter(TorchDispatchMode):
    """``syncs`` and ``launches`` (Counters by op name; Triton kernels as ``triton:<name>``)."""

    def __init__(self):
        super().__init__()
        self.syncs: Counter[str] = Counter()
        self.launches: Counter[str] = Counter()
        self._paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self._paused:
            name = func._schema.name.split("::")[-1]
            if _is_sync(func, args, kwargs):
                self.syncs[name] += 1
            elif not (func.is_view or name in FREE_OPS):
                self.launches[name] += 1
        return func(*args, **kwargs)

    @contextlib.contextmanager
    def counting_triton(self):
        """Count Triton launches while active (interpreter and compiled runtime alike)."""
        from triton.runtime import interpreter, jit

        originals = {cls: cls.run for cls in (interpreter.InterpretedFunction, jit.JITFunction)}
        counter = self
        tolist = torch.Tensor.tolist

        def counted_tolist(tensor):  # reads CPU values without the dispatcher (on a GPU
            if tensor.device.type == "cpu":  # tensor the dispatcher sees its copy to the host)
                counter.syncs["tolist"] += 1
            counter._paused += 1
            try:
                return tolist(tensor)
            finally:
                counter._paused -= 1

        def wrap(original):
            def run(self, *args, **kwargs):
                counter.launches[f"triton:{self.fn.__name__}"] += 1
                counter._paused += 1
                try:
                    return original(self, *args, **kwargs)
                finally:
                    counter._paused -= 1

            return run

        for cls, original in originals.items():
            cls.run = wrap(original)
        torch.Tensor.tolist = counted_tolist
        try:
            with self:
                yield self
        finally:
            for cls, original in originals.items():
                cls.run = original
            torch.Tensor.tolist = tolist

    def report(self) -> str:
        return (f"syncs {sum(self.syncs.values())} {dict(self.syncs)}; "
                f"launches {sum(self.launches.values())} {dict(self.launches)}")
