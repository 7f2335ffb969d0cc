"""bench/word2vec_vs_gensim.py in smoke form (needs gensim; its bundled data, no download)."""

import json

import pytest

pytest.importorskip("gensim")

from bench import word2vec_vs_gensim  # noqa: E402


def test_comparison_smoke(tmp_path):
    out = tmp_path / "out"
    result = word2vec_vs_gensim.main([
        "--max-lines", "300", "--gensim-epochs", "1", "--sparsemb-epochs", "1",
        "--batch-size", "1024", "--dim", "16", "--threads", "1", "--out", str(out),
        "--json", str(tmp_path / "result.json"),
    ])
    assert [run["provider"].split()[0] for run in result["runs"]] == ["gensim", "sparsemb"]
    for run in result["runs"]:
        assert run["epochs"] == 1 and run["train_seconds"] > 0
        assert -1 <= run["wordsim353_spearman"] <= 1 and 0 <= run["analogy_accuracy"] <= 1
    assert result["corpus"]["lines"] == 300
    assert json.loads((tmp_path / "result.json").read_text())["runs"] == result["runs"]
