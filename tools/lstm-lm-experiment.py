#!/usr/bin/env python3
"""One-off experiment (2026-11-28): does a word LSTM language model, trained on the same
lm-text as `lasr lm --words`, re-rank the default decoder's n-best list better?

Not part of lasr's build or tests; needs PyTorch (`pip install torch numpy`).

    lasr transcribe --json --nbest 64 $(cut -f1 runs/tune.tsv) > runs/tune-nbest64.jsonl
    python3 tools/lstm-lm-experiment.py ../shared/data/librispeech/lm-text runs/tune.tsv \
        runs/tune-nbest64.jsonl

Trains a one-layer LSTM LM (the 9,998 commonest words, <unk> and </s>; 256 units, tied
embedding, dropout 0.3, Adam 2e-3 halved each epoch, 4 epochs: about 10 minutes on 2
idle cores), prints its
perplexity on the tune transcripts, then the tune WER of the n-best re-ranked by
score + LAM * log P_lstm + BETA * words over a grid of LAM and BETA.
"""
import collections, json, math, random, sys, time

import torch
import torch.nn as nn

lm_dir, tune_tsv, nbest_jsonl = sys.argv[1:4]
V, H, EPOCHS = 10000, 256, 4
torch.set_num_threads(2)
torch.manual_seed(1)
random.seed(1)


def lines(path):
    for line in open(path):
        words = line.split()[1:]  # LibriSpeech lines start with an utterance id
        if words:
            yield words


train = list(lines(f"{lm_dir}/train-clean-100.txt")) + list(lines(f"{lm_dir}/dev-clean.txt"))
refs = {}
for line in open(tune_tsv):
    path, text = line.rstrip("\n").split("\t")
    refs[path] = text.split()
counts = collections.Counter(w for s in train for w in s)
vocab = ["</s>", "<unk>"] + [w for w, _ in counts.most_common(V - 2)]
index = {w: i for i, w in enumerate(vocab)}


def encode(words):
    return [0] + [index.get(w, 1) for w in words] + [0]


class Lm(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.lstm = nn.LSTM(H, H, batch_first=True)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(H, V)
        self.out.weight = self.emb.weight

    def forward(self, x):
        h, _ = self.lstm(self.drop(self.emb(x)))
        return self.out(self.drop(h))


def batches(data, size, shuffle):
    data = sorted(data, key=len)
    groups = [data[i : i + size] for i in range(0, len(data), size)]
    if shuffle:
        random.shuffle(groups)
    for g in groups:
        n = max(len(s) for s in g)
        x = torch.zeros(len(g), n - 1, dtype=torch.long)
        y = torch.full((len(g), n - 1), -100, dtype=torch.long)
        for i, s in enumerate(g):
            x[i, : len(s) - 1] = torch.tensor(s[:-1])
            y[i, : len(s) - 1] = torch.tensor(s[1:])
        yield x, y


model = Lm()
opt = torch.optim.Adam(model.parameters(), lr=2e-3)
data = [encode(s) for s in train]
held = [encode(t) for t in refs.values()]
for epoch in range(EPOCHS):
    start = time.time()
    for g in opt.param_groups:
        g["lr"] = 2e-3 * 0.5**epoch
    model.train()
    for x, y in batches(data, 32, True):
        loss = nn.functional.cross_entropy(model(x).reshape(-1, V), y.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in batches(held, 64, False):
            total += nn.functional.cross_entropy(
                model(x).reshape(-1, V), y.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            n += (y != -100).sum().item()
    print(f"epoch {epoch + 1}: tune perplexity {math.exp(total / n):.1f} ({time.time() - start:.0f} s)", flush=True)


def edits(a, b):
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        p, d[0] = d[:], i
        for j, y in enumerate(b, 1):
            d[j] = min(p[j] + 1, d[j - 1] + 1, p[j - 1] + (x != y))
    return d[-1]


utts = []
with torch.no_grad():
    for line in open(nbest_jsonl):
        o = json.loads(line)
        ref = refs[o["file"]]
        hyps = []
        for h in o["nbest"]:
            words = h["text"].upper().split()
            s = encode(words)
            logp = torch.log_softmax(model(torch.tensor([s[:-1]]))[0], -1)
            lp = logp.gather(1, torch.tensor(s[1:])[:, None]).sum().item()
            hyps.append((h["score"], lp, len(words), edits(words, ref)))
        utts.append((len(ref), hyps))
words = sum(n for n, _ in utts)
print("LAM \\ BETA", [0, 0.5, 1, 2, 3])
for lam in [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0]:
    row = []
    for beta in [0, 0.5, 1, 2, 3]:
        e = sum(max(h, key=lambda t: t[0] + lam * t[1] + beta * t[2])[3] for _, h in utts)
        row.append(round(100 * e / words, 2))
    print(lam, row)
