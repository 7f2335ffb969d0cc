"""Row-wise sharded embedding tables over ``torch.distributed`` (gloo on CPU, NCCL on GPU).

``ShardedEmbedding`` splits a table's rows over the ranks of a process group; each rank keeps
its rows and their optimizer state, and lookups exchange indices and rows with all-to-all.
``ShardedEmbeddingBag`` pools the rows it fetches the same way (``sparsemb.EmbeddingBag``).
``sharded_state_dict`` / ``load_sharded_state_dict`` make resharding checkpoints with
``torch.distributed.checkpoint``. Imported on demand (``import sparsemb.distributed``).
"""

from sparsemb.distributed.bag import ShardedEmbeddingBag
from sparsemb.distributed.checkpoint import load_sharded_state_dict, sharded_state_dict
from sparsemb.distributed.embedding import ShardedEmbedding
from sparsemb.distributed.layout import RowLayout

__all__ = [
    "ShardedEmbedding",
    "ShardedEmbeddingBag",
    "RowLayout",
    "sharded_state_dict",
    "load_sharded_state_dict",
]
