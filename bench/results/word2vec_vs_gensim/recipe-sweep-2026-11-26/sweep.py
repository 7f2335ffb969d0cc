"""Parallel word2vec sweep: each task runs examples/word2vec.py (CPU, 1 thread) on the corpus,
scoring wordsim353 after every epoch (constant-lr runs: epoch k == a k-epoch run) and both
scores at the end. Usage: python sweep.py QUEUE.json OUTFILE WORKERS"""
import importlib.util, json, os, sys, time
from multiprocessing import Pool

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def run(task):
    name, extra, seed = task
    import evalw
    spec = importlib.util.spec_from_file_location("w2v", os.path.join(HERE, "word2vec.py"))
    ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)
    ws = os.path.join(HERE, "wordsim353.tsv")
    grab = {}
    build, pairs = ex.build, ex.skipgram_pairs
    def build2(*a, **k):
        grab["model"] = m = build(*a, **k)
        return m
    per_epoch = []
    def pairs2(*a, **k):
        if "model" in grab and "words" in grab:
            w = grab["model"][0].inp.weight.detach().float().numpy()
            per_epoch.append(round(evalw.wordsim(grab["words"], w, ws)[0], 4))
        return pairs(*a, **k)
    vocab_cls = ex.Vocab
    class V(vocab_cls):
        def __init__(s, *a, **k):
            super().__init__(*a, **k); grab["words"] = s.words
    ex.build, ex.skipgram_pairs, ex.Vocab = build2, pairs2, V
    out = f"/tmp/sw/{name}-{seed}"
    argv = ["--corpus", os.path.join(HERE, "corpus.txt"), "--no-progress", "--threads", "1",
            "--device", "cpu", "--batch-size", "4096", "--fused-backward", "--out", out,
            "--seed", str(seed), "--probe", *extra]
    t = time.time()
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        s = ex.main(argv)
    w = grab["model"][0].inp.weight.detach().float().numpy()
    sim = evalw.wordsim(grab["words"], w, ws)[0]
    per_epoch.append(round(sim, 4))
    ana = evalw.analogies(grab["words"], w, os.path.join(HERE, "questions-words.txt"))
    return dict(name=name, seed=seed, wordsim=round(sim, 4), analogies=round(ana, 4),
                per_epoch=per_epoch[1:], seconds=round(time.time() - t, 1),
                train_seconds=round(s["train_seconds"], 1), epochs=s["epochs"], steps=s["steps"])


if __name__ == "__main__":
    queue = json.load(open(sys.argv[1]))
    tasks = [(q["name"], q["argv"], seed) for q in queue for seed in q.get("seeds", [0, 1])]
    with Pool(int(sys.argv[3]), maxtasksperchild=1) as pool, open(sys.argv[2], "a") as f:
        for r in pool.imap_unordered(run, tasks):
            f.write(json.dumps(r) + "\n"); f.flush()
            print(json.dumps(r), flush=True)
