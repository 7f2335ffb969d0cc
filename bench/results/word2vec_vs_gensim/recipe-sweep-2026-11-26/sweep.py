"""The recipe sweep: runs examples/word2vec.py (CPU, 1 thread, batch 4096, fused backward unless
a queue entry says otherwise) once per (setting, seed), in parallel processes, and scores
wordsim353 after every epoch and both scores at the end.

    python sweep.py QUEUE.json RESULTS.jsonl WORKERS

Run from a folder that also holds ``word2vec.py``, ``sparsemb/`` (with ``kernels/`` copied in as
``sparsemb/kernels``), ``corpus.txt`` (bench.word2vec_vs_gensim's corpus), ``wordsim353.tsv`` and
``questions-words.txt`` (gensim's test data). With a constant lr, the score after epoch k of a
run is the score of a k-epoch run (the same pairs and negatives).
"""

import contextlib
import importlib.util
import io
import json
import os
import sys
import time
from multiprocessing import Pool

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def run(task):
    name, extra, seed = task
    import evalw

    spec = importlib.util.spec_from_file_location("w2v", os.path.join(HERE, "word2vec.py"))
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    wordsim353 = os.path.join(HERE, "wordsim353.tsv")
    seen, per_epoch = {}, []
    build, pairs, vocab_class = ex.build, ex.skipgram_pairs, ex.Vocab

    def build_and_keep(*a, **k):
        seen["model"] = built = build(*a, **k)
        return built

    def score_then_pairs(*a, **k):  # called at the start of every epoch
        if "model" in seen and "words" in seen:
            weight = seen["model"][0].inp.weight.detach().float().numpy()
            per_epoch.append(round(evalw.wordsim(seen["words"], weight, wordsim353)[0], 4))
        return pairs(*a, **k)

    class KeptVocab(vocab_class):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen["words"] = self.words

    ex.build, ex.skipgram_pairs, ex.Vocab = build_and_keep, score_then_pairs, KeptVocab
    argv = ["--corpus", os.path.join(HERE, "corpus.txt"), "--no-progress", "--threads", "1",
            "--device", "cpu", "--batch-size", "4096", "--fused-backward", "--out",
            f"/tmp/sw/{name}-{seed}", "--seed", str(seed), "--probe", *extra]
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = ex.main(argv)
    weight = seen["model"][0].inp.weight.detach().float().numpy()
    sim = evalw.wordsim(seen["words"], weight, wordsim353)[0]
    per_epoch.append(round(sim, 4))
    ana = evalw.analogies(seen["words"], weight, os.path.join(HERE, "questions-words.txt"))
    return dict(name=name, seed=seed, wordsim=round(sim, 4), analogies=round(ana, 4),
                per_epoch=per_epoch[1:],  # [0] scored the initial tables
                seconds=round(time.time() - start, 1),
                train_seconds=round(summary["train_seconds"], 1), epochs=summary["epochs"],
                steps=summary["steps"])


if __name__ == "__main__":
    queue = json.load(open(sys.argv[1]))
    tasks = [(q["name"], q["argv"], seed) for q in queue for seed in q.get("seeds", [0, 1])]
    with Pool(int(sys.argv[3]), maxtasksperchild=1) as pool, open(sys.argv[2], "a") as f:
        for row in pool.imap_unordered(run, tasks):
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(json.dumps(row), flush=True)
