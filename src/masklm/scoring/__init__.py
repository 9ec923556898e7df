"""Sentence scoring (PLL, PLL-word-l2r, causal, MNTP) and minimal-pair evaluation.

``score_sentences(model, tokenizer, sentences, metric, reduction, per_token)`` is what
``Pipeline.score`` runs; ``minimal_pairs`` reads BLiMP-format JSONL and tallies accuracy.
"""

from masklm.scoring.minimal_pairs import Pair, evaluate, read_pairs
from masklm.scoring.pll import METRICS, REDUCTIONS, score_sentences, token_logprobs

__all__ = ["METRICS", "REDUCTIONS", "Pair", "evaluate", "read_pairs", "score_sentences", "token_logprobs"]
