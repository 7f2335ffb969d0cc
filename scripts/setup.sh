#!/usr/bin/env bash
# Set up .venv with sparsemb (editable) and its test, bench and cpu (Numba) extras.
#
# torch: a torch the machine already has is kept (the venv sees system packages). Where there is
# none, the CPU build (torch==2.13.0) is installed on machines without an NVIDIA GPU, and the
# default CUDA build where `nvidia-smi` finds a GPU. SPARSEMB_TORCH_INDEX=<url> (for instance
# https://download.pytorch.org/whl/cpu) picks the index torch comes from.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv --system-site-packages .venv
fi
venv_python=.venv/bin/python
index_args=()
if [ -n "${SPARSEMB_TORCH_INDEX:-}" ]; then
  index_args=(--index-url "$SPARSEMB_TORCH_INDEX")
fi

if ! "$venv_python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: no torch found; installing the CUDA build"
    "$venv_python" -m pip install -q "${index_args[@]}" "torch>=2.11"
  else
    echo "setup: no torch and no GPU found; installing the CPU build torch==2.13.0"
    "$venv_python" -m pip install -q "${index_args[@]}" "torch==2.13.0"
  fi
fi
"$venv_python" -m pip install -q -e ".[test,bench,cpu]"
# CI (CI=true) also installs the optional integrations' extras, best effort, so their tests
# (tests/test_transformers.py, tests/test_vectors_gensim.py) run there; elsewhere they skip.
if [ "${CI:-}" = "true" ]; then
  "$venv_python" -m pip install -q -e ".[hf,gensim]" \
    || echo "setup: the hf/gensim extras did not install; their tests will skip"
fi

# --bench: also the FBGEMM peer of the benchmarks, where a CPU wheel matches this torch
# (each fbgemm-gpu-cpu release is built against one torch: 1.8.0 <-> torch 2.13).
if [ "${1:-}" = "--bench" ]; then
  torch_minor=$("$venv_python" -c "import torch; print('.'.join(torch.__version__.split('.')[:2]))")
  if [ "$torch_minor" = "2.13" ] && ! "$venv_python" -c "import fbgemm_gpu" 2>/dev/null; then
    "$venv_python" -m pip install -q "fbgemm-gpu-cpu==1.8.0" \
      || echo "setup: fbgemm-gpu-cpu==1.8.0 did not install; the FBGEMM peer will be skipped"
  elif [ "$torch_minor" != "2.13" ]; then
    echo "setup: no known fbgemm-gpu-cpu wheel for torch $torch_minor; the FBGEMM peer is skipped"
  fi
fi
"$venv_python" -c "import torch, sparsemb; print('setup: sparsemb', sparsemb.__version__, \
'with torch', torch.__version__, '| CUDA' if torch.cuda.is_available() else '| CPU only')"
