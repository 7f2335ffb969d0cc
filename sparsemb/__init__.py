"""sparsemb: Triton-accelerated sparse embeddings, a drop-in ``torch.nn.Embedding``."""

from sparsemb import (
    _ops,  # noqa: F401  (registers the sparsemb:: torch.library ops)
    optim,
    vectors,
)
from sparsemb.functional import embedding
from sparsemb.nn import Embedding

__version__ = "0.1.0"
__all__ = ["Embedding", "embedding", "optim", "vectors", "__version__"]
