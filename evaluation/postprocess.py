"""Inference tricks papers report, applied to a text->video score matrix [queries, candidates].

- Dual softmax (DSL, CAMoE: Cheng et al. 2021): each score times the softmax, over all the test
  queries, of the scores of its candidate: S'[q, c] = S[q, c] * exp(t S[q, c]) / sum_q' exp(t S[q', c]),
  with t the head's temperature (cosine heads; a cross-encoder's scores are already logits, t = 1).
  It reads every test query at once: transductive, so a fair comparison reports it beside the raw
  numbers, never instead of them. Binary weighs a caption against the record's other caption, so
  there each query's normaliser leaves out the captions of its record's other side.
- Querybank normalisation with the dynamic inverted softmax (QB-Norm: Bogolin et al. 2022): a bank
  of training queries is scored against the test candidates; a candidate that is some bank query's
  best (the activation set) is a hub. A test query whose best candidate is a hub has every score
  replaced by exp(b S[q, c]) / sum_bank exp(b S_bank[., c]) (b = 20 on cosines, the paper's), the
  others are left as they are.

Both change text->video ranking only; results carrying them are named "{method} +DSL" and
"{method} +QB-Norm" and are reported apart from raw numbers.
"""

import numpy as np

POSTPROCESS = ("dsl", "qbnorm")
METHOD_SUFFIX = {"dsl": " +DSL", "qbnorm": " +QB-Norm"}
QB_BETA = 20.0  # the paper's inverse temperature, on cosine similarities


def dual_softmax(scores: np.ndarray, temperature: float, left_out: list | None = None) -> np.ndarray:
    """S times the column-wise (over queries) softmax of temperature * S. With `left_out` (per query,
    the other queries its normaliser leaves out), each query has a normaliser of its own: Binary's,
    which must not read the alternative caption its pair weighs the query against."""
    scores = np.asarray(scores, dtype=np.float64)
    logits = temperature * scores
    prior = np.exp(logits - logits.max(axis=0, keepdims=True))
    total = prior.sum(axis=0)
    if left_out is None:
        return scores * prior / total
    normalised = np.empty_like(scores)
    for query, others in enumerate(left_out):
        normalised[query] = scores[query] * prior[query] / (total - prior[others].sum(axis=0))
    return normalised


def querybank_normalise(scores: np.ndarray, bank_scores, beta: float = QB_BETA) -> np.ndarray:
    """Dynamic inverted softmax. `bank_scores` yields blocks of the bank's scores [bank rows,
    candidates] (the bank is large: it is never held whole)."""
    scores = np.asarray(scores, dtype=np.float64)
    normaliser = np.zeros(scores.shape[1])
    hubs = np.zeros(scores.shape[1], dtype=bool)
    for block in bank_scores:
        block = np.asarray(block, dtype=np.float64)
        normaliser += np.exp(beta * block).sum(axis=0)
        hubs[block.argmax(axis=1)] = True
    normalised = scores.copy()
    rows = hubs[scores.argmax(axis=1)]
    normalised[rows] = np.exp(beta * scores[rows]) / normaliser
    return normalised
