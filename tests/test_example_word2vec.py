"""examples/word2vec.py in smoke mode: it trains (the loss goes down), prints neighbours and
writes the vectors, for sparsemb and for the torch baseline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sparsemb.vectors import load_vectors

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "word2vec.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("word2vec_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    """The runs use ``--threads 1`` (small ops on a shared CI machine are steadier on one thread);
    the process's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    yield ["--threads", "1", "--no-progress"]
    torch.set_num_threads(threads)


def tiny_corpus(path: Path) -> Path:
    """Documents from a small grammar: words of a kind share contexts, so SGNS has signal."""
    import random

    rng = random.Random(0)
    animals, places = ["cat", "dog", "bird", "fish"], ["mat", "roof", "tree", "pond"]
    verbs, files = ["sat", "slept", "waited"], ["file", "list", "thread", "socket", "error"]
    lines = []
    for _ in range(400):
        lines.append(f"the {rng.choice(animals)} {rng.choice(verbs)} on the {rng.choice(places)}")
        lines.append(f"return the {rng.choice(files)} and close the {rng.choice(files)} now")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def check_run(summary: dict, out: Path, provider: str) -> None:
    losses = summary["losses"]
    quarter = len(losses) // 4
    assert len(losses) == summary["steps"]
    assert sum(losses[-quarter:]) / quarter < sum(losses[:quarter]) / quarter
    vectors = load_vectors(out / f"vectors_{provider}.txt", cache=False)
    assert vectors.format == "word2vec" and vectors.dim == summary["dim"]
    assert len(vectors) == summary["vocab_size"]
    assert (out / f"summary_{provider}.json").exists()
    assert summary["steps_per_s"] > 0


def test_smoke_on_the_stdlib(example, tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    summary = example.main(["--smoke", "--out", str(out), *one_thread])
    check_run(summary, out, "sparsemb")
    printed = capsys.readouterr().out
    assert "nearest neighbours" in printed and "steps/s" in printed
    assert "sparsemb.optim.SparseAdam" in printed


@pytest.mark.parametrize("baseline", [None, "torch", "torch-dense"])
@pytest.mark.parametrize("optimizer, lr", [("adam", "0.02"), ("adagrad", "0.2")])
def test_smoke_on_a_given_corpus(example, tmp_path, baseline, optimizer, lr, one_thread):
    out = tmp_path / "out"
    argv = ["--smoke", "--corpus", str(tiny_corpus(tmp_path / "corpus.txt")), "--out", str(out),
            "--steps", "40", "--probe", "cat", "file", "--optimizer", optimizer, "--lr", lr,
            *one_thread]
    summary = example.main(argv + (["--baseline", baseline] if baseline else []))
    check_run(summary, out, baseline or "sparsemb")
    assert set(summary["neighbours"]) == {"cat", "file"}


def test_epochs_and_fused_backward(example, tmp_path, one_thread):
    """--epochs runs whole passes (the step count follows from the corpus); --fused-backward
    updates inside backward and reaches the same loss as the separate step."""
    corpus = str(tiny_corpus(tmp_path / "corpus.txt"))
    runs = {}
    for fused in (False, True):
        out = tmp_path / f"out{fused}"
        argv = ["--smoke", "--corpus", corpus, "--out", str(out), "--epochs", "2",
                "--probe", "cat", *one_thread]
        runs[fused] = example.main(argv + (["--fused-backward"] if fused else []))
        check_run(runs[fused], out, "sparsemb")
    assert runs[True]["epochs"] == runs[False]["epochs"] == 2
    assert runs[True]["steps"] == runs[False]["steps"] > 0
    assert runs[True]["fused_backward"] and not runs[False]["fused_backward"]
    # same data and rule: the fused update equals backward + step (up to summation order)
    assert runs[True]["losses"] == pytest.approx(runs[False]["losses"], rel=1e-4, abs=1e-5)
    with pytest.raises(SystemExit):
        example.main(["--epochs", "0", *one_thread])
