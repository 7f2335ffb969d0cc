"""Adapters for training frameworks; each submodule imports its framework, so import it only
where that framework is installed (``pip install 'sparsemb[hf]'`` for ``.transformers``)."""
