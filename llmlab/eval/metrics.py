"""The scoring primitives live in llmlab.tasks.metrics (tasks sit below eval/ and score with
them); their names stay importable from here."""

from llmlab.tasks.metrics import (
    answer_match,
    exact_match,
    final_number,
    mcnemar,
    mean_pass_at_k,
    normalize_answer,
    number_match,
    numbers_in,
    parse_number,
    pass_at_k,
    token_f1,
    wilson_interval,
)

__all__ = ["answer_match", "exact_match", "final_number", "mcnemar", "mean_pass_at_k",
           "normalize_answer", "number_match", "numbers_in", "parse_number", "pass_at_k",
           "token_f1", "wilson_interval"]
