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


def test_linear_lr_falls_to_the_floor(example):
    lrs = [example.linear_lr(0.02, 0.01, step, 100) for step in (0, 50, 99, 100, 150)]
    assert lrs[0] == 0.02 and lrs[1] == pytest.approx(0.01)
    assert lrs[2] == pytest.approx(0.0002) and lrs[3] == lrs[4] == pytest.approx(0.0002)


def test_recipe_sets_its_options_and_explicit_options_win(example):
    args = example.parse_args(["--recipe", "gensim"])
    for name, value in example.RECIPES["gensim"].items():
        assert getattr(args, name) == value
    args = example.parse_args(["--recipe", "gensim", "--epochs", "2", "--lr", "0.01"])
    assert (args.epochs, args.lr) == (2, 0.01)
    assert args.batch_size == example.RECIPES["gensim"]["batch_size"] != 1024
    # an option given its default value is still given: the recipe leaves it alone
    assert example.parse_args(["--recipe", "gensim", "--batch-size", "1024"]).batch_size == 1024
    assert not example.parse_args(["--recipe", "gensim", "--baseline", "torch"]).fused_backward
    with pytest.raises(SystemExit):
        example.parse_args(["--min-lr-ratio", "2"])


def test_linear_schedule_trains_and_ends_at_the_floor(example, tmp_path, one_thread):
    out = tmp_path / "out"
    argv = ["--smoke", "--corpus", str(tiny_corpus(tmp_path / "corpus.txt")), "--out", str(out),
            "--epochs", "3", "--batch-size", "64", "--lr-schedule", "linear",
            "--min-lr-ratio", "0.1", *one_thread]
    summary = example.main(argv)
    check_run(summary, out, "sparsemb")
    assert summary["lr_schedule"] == "linear" and summary["epochs"] == 3
    # epochs differ a little in pairs (subsampling): the last step is near the schedule's end
    assert 0.02 * 0.1 <= summary["final_lr"] < 0.02 * 0.15


def test_table_and_optimizer_options_reach_the_model(example):
    """--scale-grad-by-freq reaches both tables and --betas the Adam rule; rowwise_adagrad is
    sparsemb's RowWiseAdagrad."""
    model, optimizer = example.build("sparsemb", 10, 4, 0.01, "cpu", "adam",
                                      scale_grad_by_freq=True, betas=(0.5, 0.9))
    assert model.inp.scale_grad_by_freq and model.out.scale_grad_by_freq
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.9)
    model, optimizer = example.build("sparsemb", 10, 4, 0.01, "cpu", "rowwise_adagrad")
    assert not model.inp.scale_grad_by_freq and not model.out.scale_grad_by_freq
    assert type(optimizer).__name__ == "RowWiseAdagrad"
    model, _ = example.build("torch-dense", 10, 4, 0.01, "cpu", "sgd", scale_grad_by_freq=True)
    assert model.inp.scale_grad_by_freq
    args = example.parse_args(["--betas", "0.5", "0.9", "--scale-grad-by-freq"])
    assert args.betas == [0.5, 0.9] and args.scale_grad_by_freq
    for bad in (["--optimizer", "sgd", "--betas", "0.5", "0.9"],
                ["--optimizer", "rowwise_adagrad", "--baseline", "torch"],
                ["--scale-grad-by-freq", "--baseline", "torch"]):
        with pytest.raises(SystemExit):
            example.parse_args(bad)


def test_scale_grad_by_freq_changes_the_training(example, tmp_path, one_thread):
    """The flag reaches the lookups: the same run with it follows another loss curve, which
    stays finite and goes down; the summary records it."""
    corpus = str(tiny_corpus(tmp_path / "corpus.txt"))
    runs = {}
    for scaled in (False, True):
        out = tmp_path / f"out{scaled}"
        argv = ["--smoke", "--corpus", corpus, "--out", str(out), "--steps", "40", "--probe",
                "cat", "--optimizer", "sgd", "--lr", "5", *one_thread]
        runs[scaled] = example.main(argv + (["--scale-grad-by-freq"] if scaled else []))
        check_run(runs[scaled], out, "sparsemb")
        assert runs[scaled]["scale_grad_by_freq"] is scaled
    # step 0 sees the same tables; the updates differ from there on
    assert runs[True]["losses"][0] == runs[False]["losses"][0]
    assert runs[True]["losses"][1:] != pytest.approx(runs[False]["losses"][1:], rel=1e-3)
