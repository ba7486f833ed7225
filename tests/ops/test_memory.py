"""The op never holds the N x V logits: with a workspace an eighth of the full logits, forward+backward
peaks well under the naive path (measured as resident-set rise in fresh processes)."""
from bench.cpu_memory import run


def test_peak_memory_is_a_fraction_of_naive():
    shape = {"n": 2048, "h": 64, "v": 16000}
    logits_mib = shape["n"] * shape["v"] * 4 / 2**20
    out = run("logprobs", shape, env={"RDPO_FAST_WORKSPACE_MB": str(logits_mib / 8), "TRITON_INTERPRET": "0"})
    naive, ours = out["rows"]
    assert naive["peak_mib"] >= 2.5 * logits_mib  # the naive path really materialises logits and their gradient
    assert ours["ratio_to_naive"] <= 0.25, out
