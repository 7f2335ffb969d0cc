"""sparsemb: Triton-accelerated sparse embeddings, a drop-in ``torch.nn.Embedding``.

``sparsemb.vectors`` (word-vector file I/O: numpy, tqdm) is imported on first use, so
``import sparsemb`` stays light.
"""

import importlib

from sparsemb import (
    _ops,  # noqa: F401  (registers the sparsemb:: torch.library ops)
    optim,
)
from sparsemb.bag import EmbeddingBag
from sparsemb.convert import convert
from sparsemb.functional import embedding
from sparsemb.functional_bag import embedding_bag
from sparsemb.nn import Embedding

__version__ = "0.1.0"
__all__ = [
    "Embedding",
    "EmbeddingBag",
    "convert",
    "embedding",
    "embedding_bag",
    "optim",
    "vectors",
    "__version__",
]

_LAZY_SUBMODULES = ("vectors",)


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"sparsemb.{name}")
    raise AttributeError(f"module 'sparsemb' has no attribute {name!r}")
