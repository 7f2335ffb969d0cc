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


def test_sparsemb_runs_the_recipe_unless_told_otherwise(tmp_path):
    """By default the example gets --recipe gensim and none of the options the recipe sets;
    options given to the comparison reach the example, and --recipe none drops the recipe."""
    def argv(*options):
        args = word2vec_vs_gensim.parse_args(list(options))
        return word2vec_vs_gensim.sparsemb_argv(tmp_path / "corpus.txt", args, tmp_path / "out")

    default = argv()
    assert default[default.index("--recipe") + 1] == "gensim"
    assert not {"--epochs", "--batch-size", "--lr", "--optimizer"} & set(default)
    given = argv("--sparsemb-epochs", "3", "--lr", "0.01", "--betas", "0.5", "0.9",
                 "--scale-grad-by-freq", "--recipe", "none")
    assert "--recipe" not in given and "--scale-grad-by-freq" in given
    assert given[given.index("--epochs") + 1] == "3" and given[given.index("--lr") + 1] == "0.01"
    assert given[given.index("--betas") + 1:given.index("--betas") + 3] == ["0.5", "0.9"]
