"""bench/vocab_parallel_memory runs end to end at a tiny shape (two torchrun launches, gloo): every rank
reports a peak, and the per-rank weight and logits workspace halve from TP=1 to TP=2."""
import pytest
import torch.distributed as dist

from bench.vocab_parallel_memory import run


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_tp1_and_tp2_run_and_halve_the_vocabulary_terms():
    out = run(tps=(1, 2), shape={"pairs": 1, "t": 32, "h": 16, "v": 1000})
    one, two = out["rows"]
    assert (one["tp"], two["tp"]) == (1, 2) and len(two["peak_mib_per_rank"]) == 2
    assert two["weight_mib"] == one["weight_mib"] / 2
    assert two["logits_workspace_mib"] == one["logits_workspace_mib"] / 2
    assert two["allgather_bytes_sent_per_row"] == 12 and "allgather_bytes_sent_per_row" not in one
