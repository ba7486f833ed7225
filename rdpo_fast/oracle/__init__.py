"""Pure-torch reference implementations (the float64 oracle of every test, the CPU fallback's maths).

Importable on its own: nothing here touches Triton.
"""
from .logprobs import (
    logits_from_hidden,
    ref_linear_logprobs,
    ref_log_sum_sq_probs,
    ref_logprobs,
    ref_sequence_logit_sums,
    ref_sequence_logprobs,
    ref_sequence_sums,
    transform_logits,
)
from .preference import ref_preference_loss

__all__ = [
    "ref_preference_loss",
    "logits_from_hidden",
    "ref_linear_logprobs",
    "ref_log_sum_sq_probs",
    "ref_logprobs",
    "ref_sequence_logit_sums",
    "ref_sequence_logprobs",
    "ref_sequence_sums",
    "transform_logits",
]
