"""examples/word2vec.py against gensim's Word2Vec: the same corpus, the same evaluation.

The corpus is built from files gensim ships in its package (nothing is downloaded):
``lee_background.cor`` plus the text of the English Wikipedia excerpt
(``enwiki-latest-pages-articles1...-shortened.bz2``, read with ``gensim.corpora.WikiCorpus``),
tokenized once with the example's tokenizer and cut into lines of at most 1,000 tokens (gensim
truncates longer sentences; the example never pairs words across lines). Both train skip-gram
with negative sampling (dim, window, negatives, min count and subsampling equal); gensim with
``--gensim-workers`` threads, sparsemb with ``--threads``. sparsemb trains with the example's
``--recipe gensim`` (SparseAdam lr 0.005, batch 8192, 7 epochs, fused backward) unless
``--recipe none``; the sparsemb options given here win over the recipe's. The vectors of both
are scored with gensim's ``evaluate_word_pairs`` (wordsim353, Spearman) and
``evaluate_word_analogies`` (questions-words, accuracy), on the files gensim ships.

    python -m bench.word2vec_vs_gensim                     # gensim 40 epochs against the recipe
    python -m bench.word2vec_vs_gensim --gensim-epochs 5 --sparsemb-epochs 1   # a quick look

Writes ``bench/out/word2vec_vs_gensim/<date>.json`` (or ``--json``) and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "word2vec_vs_gensim"
WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def gensim_data() -> Path:
    import gensim

    return Path(gensim.__file__).resolve().parent / "test" / "test_data"


def load_example():
    spec = importlib.util.spec_from_file_location("word2vec_example", ROOT / "examples" /
                                                  "word2vec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_corpus(example, path: Path, line_tokens: int = 1000) -> Path:
    """lee_background + the wiki excerpt as lines of tokens (cached in ``path``)."""
    if path.exists():
        return path
    from gensim.corpora import WikiCorpus

    data = gensim_data()
    docs = (data / "lee_background.cor").read_text(encoding="utf-8").splitlines()
    wiki = WikiCorpus(str(data / WIKI), processes=1, dictionary={}, lower=True,
                      token_min_len=1, token_max_len=30)
    docs += [" ".join(tokens) for tokens in wiki.get_texts()]
    lines = []
    for tokens in example.tokenize_docs(docs):
        lines += [" ".join(tokens[i:i + line_tokens]) for i in range(0, len(tokens), line_tokens)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(line for line in lines if line), encoding="utf-8")
    return path


def evaluate(keyed_vectors) -> dict:
    data = gensim_data()
    pearson, spearman, oov = keyed_vectors.evaluate_word_pairs(str(data / "wordsim353.tsv"))
    analogy, _ = keyed_vectors.evaluate_word_analogies(str(data / "questions-words.txt"))
    return {"wordsim353_spearman": float(spearman[0]), "wordsim353_oov_percent": float(oov),
            "analogy_accuracy": float(analogy)}


def run_gensim(corpus: Path, args) -> dict:
    import gensim
    from gensim.models import Word2Vec

    sentences = [line.split() for line in corpus.read_text(encoding="utf-8").splitlines()]
    sentences = sentences[: args.max_lines]
    start = time.perf_counter()
    model = Word2Vec(sentences, vector_size=args.dim, window=args.window,
                     negative=args.negatives, sg=1, min_count=args.min_count, sample=args.sample,
                     workers=args.gensim_workers, epochs=args.gensim_epochs, seed=args.seed)
    seconds = time.perf_counter() - start
    return {"provider": f"gensim {gensim.__version__}", "epochs": args.gensim_epochs,
            "train_seconds": seconds, "threads": args.gensim_workers, **evaluate(model.wv)}


def run_sparsemb(example, corpus: Path, args, out: Path) -> dict:
    from gensim.models import KeyedVectors

    summary = example.main(sparsemb_argv(corpus, args, out))
    vectors = KeyedVectors.load_word2vec_format(summary["vectors"])
    settings = ("steps", "steps_per_s", "batch_size", "lr", "optimizer", "lr_schedule", "betas",
                "scale_grad_by_freq", "fused_backward", "recipe", "tokens", "vocab_size")
    return {"provider": "sparsemb", "epochs": summary["epochs"],
            "train_seconds": summary["train_seconds"], "threads": summary["threads"],
            **{name: summary[name] for name in settings}, **evaluate(vectors)}


def sparsemb_argv(corpus: Path, args, out: Path) -> list[str]:
    """The example's command line: the shared settings, the recipe, and the sparsemb options
    given here (left unset, the recipe's or the example's defaults apply)."""
    argv = ["--corpus", str(corpus), "--dim", str(args.dim), "--window", str(args.window),
            "--negatives", str(args.negatives), "--min-count", str(args.min_count), "--sample",
            str(args.sample), "--out", str(out), "--seed", str(args.seed), "--no-progress",
            "--threads", str(args.threads)]
    if args.recipe != "none":
        argv += ["--recipe", args.recipe]
    for flag, value in (("--epochs", args.sparsemb_epochs), ("--batch-size", args.batch_size),
                        ("--lr", args.lr), ("--optimizer", args.optimizer),
                        ("--lr-schedule", args.lr_schedule)):
        if value is not None:
            argv += [flag, str(value)]
    if args.betas is not None:
        argv += ["--betas", *map(str, args.betas)]
    argv += ["--fused-backward"] * args.fused_backward
    argv += ["--scale-grad-by-freq"] * args.scale_grad_by_freq
    return argv


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gensim-epochs", type=int, default=40)
    p.add_argument("--recipe", choices=("gensim", "none"), default="gensim",
                   help="the example's --recipe for sparsemb (none: the example's defaults)")
    p.add_argument("--sparsemb-epochs", type=int, help="default: the recipe's (7)")
    p.add_argument("--gensim-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="sparsemb's torch CPU threads")
    p.add_argument("--batch-size", type=int, help="default: the recipe's (8192)")
    p.add_argument("--lr", type=float, help="default: the recipe's (0.005)")
    p.add_argument("--optimizer", choices=("adam", "adagrad", "rowwise_adagrad", "sgd"))
    p.add_argument("--lr-schedule", choices=("constant", "linear"))
    p.add_argument("--betas", type=float, nargs=2, metavar=("BETA1", "BETA2"))
    p.add_argument("--fused-backward", action="store_true", help="(the recipe sets it)")
    p.add_argument("--scale-grad-by-freq", action="store_true")
    p.add_argument("--skip", choices=("gensim", "sparsemb"), help="run one side only")
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--negatives", type=int, default=5)
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--sample", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-lines", type=int, help="train on the corpus's first lines only (smoke)")
    p.add_argument("--out", type=Path, default=OUT, help="corpus cache and sparsemb's outputs")
    p.add_argument("--json", type=Path, help="where to write the results")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    load_at_start = os.getloadavg()
    example = load_example()
    corpus = build_corpus(example, args.out / "corpus-lee-enwiki.txt")
    if args.max_lines:
        lines = corpus.read_text(encoding="utf-8").splitlines()[: args.max_lines]
        corpus = args.out / f"corpus-lee-enwiki-{args.max_lines}.txt"
        corpus.write_text("\n".join(lines), encoding="utf-8")
    runs = []
    if args.skip != "gensim":
        runs.append(run_gensim(corpus, args))
    if args.skip != "sparsemb":
        runs.append(run_sparsemb(example, corpus, args, args.out / "sparsemb"))
    result = {
        "command": "python -m bench.word2vec_vs_gensim " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}",
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "corpus": {"path": str(corpus), "lines": sum(1 for _ in corpus.open(encoding="utf-8")),
                   "tokens": sum(len(line.split()) for line in corpus.open(encoding="utf-8"))},
        "runs": runs,
    }
    print(f"corpus: {result['corpus']['tokens']:,} tokens; load average (1, 5, 15 min) at "
          f"start {load_at_start}, at end {result['load_average_at_end']}")
    print(f"{'provider':<14}{'epochs':>7}{'seconds':>9}{'wordsim353':>12}{'analogies':>11}")
    for run in runs:
        print(f"{run['provider']:<14}{run['epochs']:>7}{run['train_seconds']:>9.1f}"
              f"{run['wordsim353_spearman']:>12.3f}{run['analogy_accuracy']:>11.3f}")
    path = args.json or args.out / f"{datetime.now(timezone.utc):%Y-%m-%dT%H%M}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"written: {path}")
    return result


if __name__ == "__main__":
    main()
