"""``sparsemb.EmbeddingBag``: a drop-in ``torch.nn.EmbeddingBag`` running sparsemb's ops.

It subclasses ``torch.nn.EmbeddingBag``, so the constructor, ``weight``, ``state_dict`` keys,
``reset_parameters``, ``extra_repr`` and ``isinstance`` checks are torch's own; only validation
(clear exceptions instead of asserts) and ``forward`` differ.
"""

from __future__ import annotations

from torch import Tensor, nn

from sparsemb._checks import bag_mode, check_bounds_check, check_renorm_args, check_table_args
from sparsemb.functional_bag import embedding_bag


class EmbeddingBag(nn.EmbeddingBag):
    """Pooled lookups equal to ``torch.nn.EmbeddingBag`` with a deduplicated sparse gradient.

    Beyond torch: ``mode="max"`` with ``sparse=True``. Extra keyword: ``bounds_check="raise"``
    (default) raises IndexError on an index outside the table; ``"none"`` skips the check.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Tensor | None = None,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        device=None,
        dtype=None,
        *,
        bounds_check: str = "raise",
    ) -> None:
        check_table_args(num_embeddings, embedding_dim, padding_idx, _weight)
        check_renorm_args(max_norm, norm_type)
        check_bounds_check(bounds_check)
        bag_mode(mode)
        super().__init__(
            num_embeddings,
            embedding_dim,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            mode=mode,
            sparse=sparse,
            _weight=_weight,
            include_last_offset=include_last_offset,
            padding_idx=padding_idx,
            device=device,
            dtype=dtype,
        )
        self.bounds_check = bounds_check

    def forward(
        self,
        input: Tensor,
        offsets: Tensor | None = None,
        per_sample_weights: Tensor | None = None,
    ) -> Tensor:
        return embedding_bag(
            input,
            self.weight,
            offsets,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.mode,
            self.sparse,
            per_sample_weights,
            self.include_last_offset,
            self.padding_idx,
            bounds_check=self.bounds_check,
        )

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Tensor,
        freeze: bool = True,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
    ) -> EmbeddingBag:
        """Build a bag table holding ``embeddings`` (2-D); ``freeze`` sets requires_grad=False."""
        if not isinstance(embeddings, Tensor):
            raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be 2-D, got shape {tuple(embeddings.shape)}")
        rows, cols = embeddings.shape
        table = cls(
            num_embeddings=rows,
            embedding_dim=cols,
            _weight=embeddings,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            mode=mode,
            sparse=sparse,
            include_last_offset=include_last_offset,
            padding_idx=padding_idx,
        )
        table.weight.requires_grad = not freeze
        return table


__all__ = ["EmbeddingBag"]
