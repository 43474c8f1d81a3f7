"""Re-ranks `lasr transcribe --json --nbest N` output offline with other weights for the
attention decoder and the ensemble speller, and scores it against a TSV manifest
(path<TAB>transcript) as `lasr bench` scores: upper-cased, letters, digits, apostrophes
and spaces kept, spaces collapsed; word and character edits summed over the corpus.

    lasr transcribe --json --nbest 8 --rescore 0.4 --ensemble-speller 0.4 FILES... > nbest.jsonl
    python3 tools/rerank_nbest.py tune.tsv nbest.jsonl 0.4 0.4 "0.4:0 0.4:0.2 0:0.4"

The two numbers are the weights the n-best was decoded with (attention, ensemble
speller); each A:E setting re-ranks with attention weight A and ensemble speller
weight E. A hypothesis's other scores (CTC, language models) are kept as decoded, so
with A:E equal to the decoding's weights it reproduces the decoding's WER exactly.
"""
import json
import sys


def norm(t):
    t = "".join(c for c in t.upper() if c.isalnum() or c == "'" or c.isspace())
    return " ".join(t.split())


def edits(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def main():
    manifest, nbest, wa0, we0, settings = sys.argv[1:6]
    wa0, we0 = float(wa0), float(we0)
    refs = {}
    for line in open(manifest):
        path, text = line.rstrip("\n").split("\t")
        refs[path] = norm(text)
    utts, words, chars = [], 0, 0
    for line in open(nbest):
        o = json.loads(line)
        ref = refs[o["file"]]
        words += len(ref.split())
        chars += len(ref)
        hyps = []
        for h in o["nbest"]:
            hyp = norm(h["text"])
            att = h.get("attention_log_prob", 0.0)
            es = h.get("ensemble_speller_log_prob", 0.0)
            base = h["score"] - wa0 * att - we0 * es
            hyps.append((base, att, es, edits(ref.split(), hyp.split()), edits(ref, hyp)))
        utts.append(hyps)
    print(f"{len(utts)} utterances, {words} words")
    for s in settings.split():
        wa, we = map(float, s.split(":"))
        w = c = 0
        for hyps in utts:
            # max keeps the first of equal scores, as decoding's stable sort does.
            best = max(hyps, key=lambda h: h[0] + wa * h[1] + we * h[2])
            w += best[3]
            c += best[4]
        print(f"attention {wa} ensemble speller {we}: WER {100 * w / words:.2f} CER {100 * c / chars:.2f}")


if __name__ == "__main__":
    main()
