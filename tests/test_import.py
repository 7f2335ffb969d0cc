"""``import sparsemb`` stays light: no vector I/O, no Triton, no Dynamo until used."""

import subprocess
import sys


def test_import_is_light():
    code = (
        "import sys, sparsemb\n"
        "heavy = [m for m in ('sparsemb.vectors', 'sparsemb._vector_formats', 'triton',"
        " 'sparsemb.kernels', 'torch._dynamo') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert sparsemb.vectors.load_vectors\n"
        "assert 'sparsemb.vectors' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
