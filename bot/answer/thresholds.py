"""When the knowledge path abstains: the calibrated relevance thresholds, one home for their numbers.

Two presets. `standard` abstains on questions the documents do not answer while rarely refusing one they do;
`strict` (legal, medical) refuses more answerable questions to abstain on nearly every unanswerable one. Both
were chosen by `bench/bench_abstention.py` on held-out questions of two shared data sets plus unanswerable
questions (one data set's questions asked against another's corpus, and router fact questions); the figures are
in the comments below and in that bench's JSON.
"""

from __future__ import annotations

from typing import Literal

Strictness = Literal["standard", "strict"]

# Best retrieved passage's cosine below which no answer is attempted (the hybrid hit score). The evidence score below
# separates answerable from unanswerable questions better (bench_abstention: at 9.6% false abstention the passage
# score abstains on 59% of unanswerable questions, the evidence score on 84.5%), so this stays a cheap first cut.
MIN_RELEVANCE: dict[str, float] = {"standard": 0.25, "strict": 0.25}
# Best evidence sentence's score (cosine + overlap + chunk prior, bot/answer/evidence.py) below which the answer is
# "not in your documents". `python -m bench.bench_abstention` on 1,100 questions (answerable: covid-qa 400-699 and
# 200 SciFact train claims on their own corpora; unanswerable: 200 covid-qa questions against SciFact, 200 SciFact
# claims against covid-qa, 100 router fact questions against each):
#   standard 0.68: abstains on 82.2% of unanswerable (router questions 95-98%, SciFact→covid-qa 88%, covid-qa→SciFact
#                  62%: biomedical questions that SciFact abstracts half answer), false abstention 9.8%;
#   strict   0.90: abstains on 98.0% of unanswerable, false abstention 34.2%.
MIN_EVIDENCE: dict[str, float] = {"standard": 0.68, "strict": 0.90}


def min_relevance(strictness: Strictness, configured: float | None = None) -> float:
    return MIN_RELEVANCE[strictness] if configured is None else configured


def min_evidence(strictness: Strictness, configured: float | None = None) -> float:
    return MIN_EVIDENCE[strictness] if configured is None else configured
