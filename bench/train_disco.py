"""Train DISCO's stop classifier for dynamic lookahead on traces of the bundled pair.

    python bench/train_disco.py            # writes python_api/specdec/assets/disco.json

Traces: on snippets of the *training* split of the pair's corpus (never the held-out files), the target
greedily continues the snippet; at every position of that continuation the draft proposes k_max tokens
greedily. Draft token j gets label 1 when it equals the target's token there and all earlier drafts
did (the oracle "would it be accepted"); drafting stops at the first 0, so later positions carry no
label. Features are :func:`specdec.strategies.chains.draft_features` of the draft's distribution.

A logistic regression (6 weights) is fit on 80% of the traces; the decision threshold is then chosen on
the other 20% by simulated throughput: for each threshold, drafted and accepted tokens per step follow
from the labels and the classifier, and a step costs the draft's and target's forward latencies
measured on this machine (specdec.tune.measure_latency). The script prints the simulated speedup of
DISCO over the best static k on the validation traces.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from specdec.models import load_default_pair
from specdec.strategies.chains import ASSETS, draft_features
from specdec.tune import interpolate, measure_latency
from specdec_kernels.benchmarking import import_script

ROOT = Path(__file__).resolve().parents[1]


def training_snippets(n: int, seed: int) -> list[str]:
    """Snippets from the pair's training files (files whose sorted index % 50 != 0)."""
    train_pair = import_script(ROOT / "bench" / "models" / "train_pair.py")  # its corpus helpers
    root, rel = train_pair.stdlib_files()
    train, _ = train_pair.split_files(rel, 50)
    rng = random.Random(seed)
    out = []
    for f in rng.sample(train, n * 3):
        text = train_pair.read_text(root / f)
        lines = [i for i, ln in enumerate(text.splitlines()) if ln.lstrip().startswith("def ")]
        if lines:
            start = rng.choice(lines)
            out.append("\n".join(text.splitlines()[max(0, start - 6) : start + 1]) + "\n")
        if len(out) == n:
            break
    return out


@torch.inference_mode()
def traces(target, draft, tok, snippets, k_max: int, new_tokens: int):
    """(features [M, 6], labels [M], step ids [M], draft index [M]) over all positions of all snippets."""
    feats, labels, steps, index = [], [], [], []
    step = 0
    bar = tqdm(snippets, desc="traces (snippets)")
    for text in bar:
        ids = tok(text, return_tensors="pt").input_ids[:, -192:]
        seq = target.generate(
            ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        )
        truth = seq[0]
        for t in range(ids.shape[1], seq.shape[1] - k_max):
            ctx = truth[:t][None]
            out = draft(ctx, use_cache=True)
            cache, logits = out.past_key_values, out.logits[0, -1]
            for j in range(1, k_max + 1):
                probs = torch.softmax(logits.float(), -1)
                d = int(probs.argmax())
                ok = d == int(truth[t + j - 1])
                feats.append(draft_features(j, probs[None])[0])
                labels.append(float(ok))
                steps.append(step)
                index.append(j)
                if not ok:
                    break
                out = draft(torch.tensor([[d]]), past_key_values=cache, use_cache=True)
                cache, logits = out.past_key_values, out.logits[0, -1]
            step += 1
        bar.set_postfix(steps=step)
    return torch.stack(feats), torch.tensor(labels), torch.tensor(steps), torch.tensor(index)


def fit(x, y, iters: int = 500) -> torch.Tensor:
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + 1e-4 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def simulate(prob, labels, steps, index, k_max, lat_t, lat_d, threshold=None, k=None):
    """Tokens per second of a policy on traces: static k (k=...) or DISCO (threshold=...)."""
    total_tokens = total_time = 0.0
    for s in steps.unique():
        sel = steps == s
        lab, p = labels[sel], prob[sel]
        if k is not None:
            drafted = k
        else:  # DISCO: stop after draft j when the classifier says the next one will not be accepted
            drafted = k_max
            for j in range(len(p)):
                if p[j] < threshold:
                    drafted = j + 1
                    break
        accepted = 0
        for j in range(min(drafted, len(lab))):
            if lab[j] < 0.5:
                break
            accepted += 1
        total_tokens += accepted + 1
        total_time += interpolate(lat_d, 2) + (drafted - 1) * interpolate(lat_d, 1) + interpolate(lat_t, drafted + 1)
    return total_tokens / total_time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snippets", type=int, default=24)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--k-max", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ASSETS / "disco.json"))
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    target, draft, tok = load_default_pair()
    t0 = time.time()
    x, y, steps, index = traces(target, draft, tok, training_snippets(a.snippets, a.seed), a.k_max, a.new_tokens)
    n_train = int(steps.max() * 0.8)
    tr, va = steps < n_train, steps >= n_train
    w = fit(x[tr], y[tr])
    prob = torch.sigmoid(x @ w)
    acc = ((prob[va] >= 0.5).float() == y[va]).float().mean()
    lat_t, lat_d = measure_latency(target), measure_latency(draft)
    static = {
        k: simulate(prob[va], y[va], steps[va], index[va], a.k_max, lat_t, lat_d, k=k) for k in range(1, a.k_max + 1)
    }
    best_k = max(static, key=static.get)
    grid = [i / 20 for i in range(1, 19)] + [0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]
    disco = {t: simulate(prob[va], y[va], steps[va], index[va], a.k_max, lat_t, lat_d, threshold=t) for t in grid}
    best_t = max(disco, key=disco.get)
    report = {
        "weights": w.tolist(),
        "threshold": best_t,
        "k_max": a.k_max,
        "features": ["top1", "top2", "top3", "entropy", "draft_index/8", "bias"],
        "train_labels": int(tr.sum()),
        "val_labels": int(va.sum()),
        "val_accuracy@0.5": round(float(acc), 4),
        "simulated_tokens_per_s": {
            "best_static_k": best_k,
            "static": round(static[best_k], 1),
            "disco": round(disco[best_t], 1),
            "disco_over_static": round(disco[best_t] / static[best_k], 3),
        },
        "command": "python bench/train_disco.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "minutes": round((time.time() - t0) / 60, 1),
    }
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
