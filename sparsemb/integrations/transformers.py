"""HuggingFace Trainer and accelerate with sparse gradients.

Trainer clips gradients through ``Accelerator.clip_grad_norm_``, which calls
``torch.nn.utils.clip_grad_norm_``: that fails on sparse gradients (``linalg_vector_norm`` has
no sparse kernel), for torch's own ``nn.Embedding(sparse=True)`` too. The recipe::

    sparsemb.convert(model, sparse=True)
    opt = sparsemb.optim.SparseAware(model, sparse="adam", dense=torch.optim.AdamW, lr=5e-5)
    trainer = SparseTrainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None))

``SparseTrainer`` is a ``Trainer`` whose accelerator clips with ``sparsemb.optim.clip_grad_norm_``
(dense and sparse gradients in one norm) whenever a gradient is sparse, and with accelerate's own
clipping otherwise; nothing else changes. For a plain ``Trainer`` or your own accelerate loop,
``clip_sparse_grads(trainer.accelerator)`` (or ``(accelerator)``) does the same. Patching the
accelerator object, a public attribute with a public method, rather than Trainer's private
``_clip_grad_norm`` keeps the recipe working across transformers releases.
"""

from __future__ import annotations

from typing import Any

from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers import Trainer

from sparsemb.optim import clip_grad_norm_ as sparse_clip_grad_norm_

# where gradients are plain local tensors (after DDP's all-reduce): sparsemb's clipping applies
_LOCAL_GRADS = {DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU}


def clip_sparse_grads(accelerator: Accelerator) -> Accelerator:
    """Make ``accelerator.clip_grad_norm_`` take sparse gradients; returns the accelerator.

    With a sparse gradient among the parameters it unscales (mixed precision) as accelerate
    does, then clips dense and sparse gradients together with ``sparsemb.optim.clip_grad_norm_``;
    without one it calls accelerate's own method. Idempotent. Sharded setups (FSDP, DeepSpeed,
    XLA) keep accelerate's clipping; a sparse gradient there raises NotImplementedError.
    """
    if not isinstance(accelerator, Accelerator):
        raise TypeError(f"expected an accelerate.Accelerator, got {type(accelerator).__name__}")
    original = accelerator.clip_grad_norm_
    if getattr(original, "_sparsemb_original", None) is not None:
        return accelerator

    def clip_grad_norm_(parameters: Any, max_norm: float, norm_type: float = 2) -> Any:
        params = [parameters] if hasattr(parameters, "grad") else list(parameters)
        if not any(p.grad is not None and p.grad.is_sparse for p in params):
            return original(params, max_norm, norm_type=norm_type)
        if accelerator.distributed_type not in _LOCAL_GRADS:
            raise NotImplementedError(
                f"sparse gradients cannot be clipped under {accelerator.distributed_type}; "
                "use sparse=False tables or set max_grad_norm=0 there"
            )
        accelerator.unscale_gradients()
        return sparse_clip_grad_norm_(params, max_norm, norm_type)

    clip_grad_norm_._sparsemb_original = original
    accelerator.clip_grad_norm_ = clip_grad_norm_
    return accelerator


class SparseTrainer(Trainer):
    """``transformers.Trainer`` that clips sparse gradients (see ``clip_sparse_grads``).

    Pass the optimizer as ``optimizers=(sparsemb.optim.SparseAware(model, ...), None)``: Trainer's
    default AdamW is dense and cannot take a sparse gradient.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        clip_sparse_grads(self.accelerator)


__all__ = ["SparseTrainer", "clip_sparse_grads"]
