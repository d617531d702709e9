"""Calibrates the support check (bot/answer/support.py): at which sentence cosine does a claim count as supported?

    .venv/bin/python -m bench.bench_support [--questions 160] [--seed 0] [--data ../shared/data/covid-qa]

Answer-like claims are built from COVID-QA questions (a seeded sample, not picked by hand), two per question:
- `span`: the gold answer (an extractive span, often a sentence fragment, as an extractive answer would quote);
- `restated`: the question restated with its gold answer ("What is X? → X: <answer>"), as a generated answer reads.
Each claim is checked against its gold passage (supported) and against the best-matching passage of a *different
article* (unsupported; candidates by TF-IDF, the best by the checker's own cosine), i.e. related-looking text that
does not say it. The sample is split in half: the threshold maximising TPR - FPR of the whole checker (cosine plus
the number, name and negation rules, as deployed) on the first half is reported with its rates on the second.
Changed-number and negated copies of the supported claims show what the contradiction rules add (they must be
caught whatever the threshold). Prints a table, writes bench/results/support.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "covid-qa"
RESULTS = HERE / "results"
THRESHOLDS = [round(0.30 + 0.025 * i, 3) for i in range(25)]  # 0.30 … 0.90
_AUX = re.compile(r"\b(is|are|was|were|can|may|will|has|have|does|do|did|should|could|would)\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])(?<![^\W\d_]-)\d+(?:\.\d+)?(?![\w.]?\d)")


def load(directory: Path):
    answers = [json.loads(line) for line in (directory / "answers.jsonl").read_text().splitlines() if line.strip()]
    corpus = {}
    for line in (directory / "corpus.jsonl").read_text().splitlines():
        record = json.loads(line)
        corpus[record["_id"]] = (record["text"], record.get("metadata", {}).get("doc_index"))
    qrels: dict[str, list[str]] = {}
    for line in (directory / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, pid, *_ = line.split("\t")
        qrels.setdefault(qid, []).append(pid)
    return answers, corpus, qrels


def restate(question: str, answer: str) -> str:
    return f"{question.strip().rstrip('?').strip()}: {answer.strip()}"


def change_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = match.group(0)
    changed = str(int(float(value)) * 10 + 7) if "." not in value else value + "5"
    return text[: match.start()] + changed + text[match.end() :]


def negate(text: str) -> str | None:
    match = _AUX.search(text)
    if match is None or re.match(r"\s+not\b", text[match.end() :]):
        return None
    return text[: match.end()] + " not" + text[match.end() :]


def rates(pos: list, neg: list, t: float) -> dict:
    """TPR (supported kept) and FPR (unsupported let through) at `t`: cosine alone, and the whole checker (cosine
    or a close quote, plus the number, name and negation rules). `pos`/`neg` are SentenceSupport results."""

    def passes(r) -> bool:
        problems = [p for p in r.problems if not p.startswith("similarity")]
        quoted = len(problems) == len(r.problems)
        return not problems and (r.score >= t or quoted)

    return {
        "threshold": t,
        "tpr_cosine": float(np.mean([r.score >= t for r in pos])),
        "fpr_cosine": float(np.mean([r.score >= t for r in neg])),
        "tpr_checker": float(np.mean([passes(r) for r in pos])),
        "fpr_checker": float(np.mean([passes(r) for r in neg])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--questions", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "support.json")
    args = parser.parse_args()

    from sklearn.feature_extraction.text import TfidfVectorizer

    from bot.answer.support import Passage, SupportChecker
    from bot.config import load_settings
    from bot.embedder import configured_embedder

    started = time.perf_counter()
    settings = load_settings()
    embedder = configured_embedder(settings)
    # At 0.999 only a close quote passes the similarity rule, so "similarity" in the problems means "no quote" and
    # the sweep can apply each threshold to the stored cosine without checking everything again.
    checker = SupportChecker(embedder, threshold=0.999)
    answers, corpus, qrels = load(args.data)
    usable = []
    for row in answers:
        gold = [pid for pid in qrels.get(row["_id"], []) if pid in corpus and row["answer"].strip() in corpus[pid][0]]
        if gold and len(row["answer"].split()) >= 2:
            usable.append((row, gold[0]))
    random.Random(args.seed).shuffle(usable)
    sample = usable[: args.questions]
    ids = list(corpus)
    tfidf = TfidfVectorizer(sublinear_tf=True, stop_words="english")
    matrix = tfidf.fit_transform([corpus[i][0] for i in ids])
    doc_of = np.asarray([corpus[i][1] for i in ids])

    rows = []
    for row, gold_id in sample:
        gold_text, gold_doc = corpus[gold_id]
        claims = {"span": row["answer"].strip(), "restated": restate(row["question"], row["answer"])}
        query = tfidf.transform([claims["restated"]])
        sims = (matrix @ query.T).toarray().ravel()
        sims[doc_of == gold_doc] = -1.0
        others = [ids[i] for i in np.argsort(-sims)[:2]]
        for kind, claim in claims.items():
            pos = checker.check_sentence(claim, [Passage(gold_id, gold_text)])
            negs = [checker.check_sentence(claim, [Passage(o, corpus[o][0])]) for o in others]
            neg = max(negs, key=lambda r: r.score)
            perturbed = {}
            for how, text in (("number", change_number(claim)), ("negation", negate(claim))):
                if text:
                    perturbed[how] = checker.check_sentence(text, [Passage(gold_id, gold_text)])
            rows.append(
                {"id": row["_id"], "kind": kind, "claim": claim, "pos": pos, "neg": neg, "perturbed": perturbed}
            )

    def rules_ok(result) -> bool:  # every problem but the cosine one
        return not [p for p in result.problems if not p.startswith("similarity")]

    half = len(sample) // 2
    dev_ids = {row["_id"] for row, _ in sample[:half]}
    table = {}
    for split in ("dev", "test"):
        part = [r for r in rows if (r["id"] in dev_ids) == (split == "dev")]
        pos, neg = [r["pos"] for r in part], [r["neg"] for r in part]
        table[split] = {"n": len(part), "sweep": [rates(pos, neg, t) for t in THRESHOLDS]}
    best = max(table["dev"]["sweep"], key=lambda r: (r["tpr_checker"] - r["fpr_checker"], r["threshold"]))
    chosen = best["threshold"]
    at = {split: next(r for r in table[split]["sweep"] if r["threshold"] == chosen) for split in table}
    by_kind = {}
    for kind in ("span", "restated"):
        part = [r for r in rows if r["kind"] == kind and r["id"] not in dev_ids]
        by_kind[kind] = rates([r["pos"] for r in part], [r["neg"] for r in part], chosen)
        by_kind[kind]["n"] = len(part)
    perturb = {}
    for how in ("number", "negation"):
        hits = [r["perturbed"][how] for r in rows if how in r["perturbed"]]
        caught = [not rates([h], [h], chosen)["tpr_checker"] for h in hits]
        by_rules = [not rules_ok(h) for h in hits]
        perturb[how] = {"n": len(hits), "caught": float(np.mean(caught)) if hits else None,
                        "caught_by_rules": float(np.mean(by_rules)) if hits else None}  # fmt: skip

    embedding = f"{settings.embedding_model} ({settings.embedding_backend}, {settings.embedding_quantize})"
    print(f"COVID-QA support calibration: {len(sample)} questions x 2 claims, seed {args.seed}, embedder {embedding}")
    print(
        "TPR: supported claims kept; FPR: unsupported claims let through. cosine = similarity alone; checker = "
        "similarity + numbers, names, negation"
    )
    print(f"{'threshold':>9} | {'dev cosine':>15} {'dev checker':>15} | {'test cosine':>15} {'test checker':>15}")
    print(f"{'':>9} | {'TPR':>7} {'FPR':>7} {'TPR':>7} {'FPR':>7} | {'TPR':>7} {'FPR':>7} {'TPR':>7} {'FPR':>7}")
    for d, t in zip(table["dev"]["sweep"], table["test"]["sweep"], strict=True):
        mark = " <" if d["threshold"] == chosen else ""
        print(f"{d['threshold']:>9.3f} | {d['tpr_cosine']:>7.3f} {d['fpr_cosine']:>7.3f} {d['tpr_checker']:>7.3f} "
              f"{d['fpr_checker']:>7.3f} | {t['tpr_cosine']:>7.3f} {t['fpr_cosine']:>7.3f} {t['tpr_checker']:>7.3f} "
              f"{t['fpr_checker']:>7.3f}{mark}")  # fmt: skip
    print(f"\nchosen on dev (max TPR-FPR of the whole checker): {chosen}")
    print(f"held-out test at {chosen}: cosine TPR {at['test']['tpr_cosine']:.3f} FPR {at['test']['fpr_cosine']:.3f}; "
          f"whole checker TPR {at['test']['tpr_checker']:.3f} FPR {at['test']['fpr_checker']:.3f}")  # fmt: skip
    for kind, r in by_kind.items():
        print(f"  {kind:<9} n={r['n']:<4} cosine TPR {r['tpr_cosine']:.3f} FPR {r['fpr_cosine']:.3f}; "
              f"checker TPR {r['tpr_checker']:.3f} FPR {r['fpr_checker']:.3f}")  # fmt: skip
    for how, r in perturb.items():
        if r["n"]:
            print(f"  {how}-changed supported claims: n={r['n']}, caught {r['caught']:.3f} "
                  f"(by the number/negation rules alone {r['caught_by_rules']:.3f})")  # fmt: skip
    wall = time.perf_counter() - started
    print(f"wall {wall:.0f}s")
    examples = [{"claim": r["claim"], "kind": r["kind"], "pos_score": r["pos"].score, "neg_score": r["neg"].score,
                 "neg_evidence": r["neg"].evidence, "neg_problems": list(r["neg"].problems)}
                for r in rows[:6]]  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "data": str(args.data), "questions": len(sample), "seed": args.seed, "embedder": settings.embedding_model,
        "backend": settings.embedding_backend, "quantize": settings.embedding_quantize, "chosen": chosen,
        "rule": "max TPR-FPR of the whole checker on the dev half", "at_chosen": at, "by_kind_test": by_kind,
        "perturbed": perturb, "sweep": table, "examples": examples, "wall_s": round(wall, 1),
    }, indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
