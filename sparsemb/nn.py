"""``sparsemb.Embedding``: a drop-in ``torch.nn.Embedding`` running sparsemb's ops.

It subclasses ``torch.nn.Embedding``, so the constructor, ``from_pretrained``, ``weight``,
``state_dict`` keys, ``reset_parameters``, ``extra_repr`` and ``isinstance`` checks are torch's
own; only validation (clear exceptions instead of asserts) and ``forward`` differ.
"""

from __future__ import annotations

from torch import Tensor, nn

from sparsemb._checks import check_bounds_check, check_renorm_args, check_table_args
from sparsemb.functional import embedding


class Embedding(nn.Embedding):
    """A lookup table equal to ``torch.nn.Embedding`` with a deduplicated sparse gradient.

    Extra keyword: ``bounds_check="raise"`` (default) raises IndexError on an index outside
    ``[0, num_embeddings)``; ``"none"`` skips the check for inputs validated upstream.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Tensor | None = None,
        _freeze: bool = False,
        device=None,
        dtype=None,
        *,
        bounds_check: str = "raise",
    ) -> None:
        check_table_args(num_embeddings, embedding_dim, padding_idx, _weight)
        check_renorm_args(max_norm, norm_type)
        check_bounds_check(bounds_check)
        super().__init__(
            num_embeddings,
            embedding_dim,
            padding_idx=padding_idx,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            sparse=sparse,
            _weight=_weight,
            _freeze=_freeze,
            device=device,
            dtype=dtype,
        )
        self.bounds_check = bounds_check

    def forward(self, input: Tensor) -> Tensor:
        return embedding(
            input,
            self.weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
            bounds_check=self.bounds_check,
        )

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Tensor,
        freeze: bool = True,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
    ) -> Embedding:
        """Build a table holding ``embeddings`` (2-D); ``freeze`` sets requires_grad=False."""
        if not isinstance(embeddings, Tensor):
            raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be 2-D, got shape {tuple(embeddings.shape)}")
        if not freeze and not (embeddings.is_floating_point() or embeddings.is_complex()):
            raise TypeError(
                f"only floating-point embeddings can be trained; got {embeddings.dtype} "
                "(use freeze=True for a lookup-only table)"
            )
        rows, cols = embeddings.shape
        return cls(
            num_embeddings=rows,
            embedding_dim=cols,
            _weight=embeddings,
            _freeze=freeze,
            padding_idx=padding_idx,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            sparse=sparse,
        )


__all__ = ["Embedding"]
