"""The forward epilogue's WPO statistic, log sum_v p_v^2 per row and per sequence, from the Triton kernel
(interpreted on CPU) and the torch twin against float64, with the other outputs unchanged by it."""
import pytest
import torch

from rdpo_fast.ops.epilogue import forward_epilogue
from rdpo_fast.oracle.logprobs import ref_log_sum_sq_probs


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("backend", ["kernel", "torch"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-5), (torch.float16, 1e-5)])
@pytest.mark.parametrize("V,temperature,softcap", [(300, 1.0, None), (5000, 0.7, 30.0)])
def test_log_sum_sq_matches_float64(backend, dtype, tol, V, temperature, softcap, device, monkeypatch):
    if backend == "torch":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        device = torch.device("cpu")
    M, S = 133, 7  # 3 programs of 64 rows under the interpreter, the last one ragged; V = 5000: two tiles
    # Sharp rows (large logits) and flat ones: sum p^2 from ~1/V to ~1.
    z = (torch.randn(M, V, device=device) * torch.logspace(-1, 1.3, M, device=device)[:, None]).to(dtype)
    labels = torch.randint(0, V, (M,), device=device)
    seq = torch.randint(0, S, (M,), device=device)
    want = ref_log_sum_sq_probs(z.double(), temperature=temperature, softcap=softcap)
    sq = torch.empty(M, device=device)
    seq_sq = torch.zeros(S, device=device)
    acc = [torch.zeros(S, device=device) for _ in range(2)]
    lse, logp = forward_epilogue(z, labels, seq_ids=seq, seq_logp=acc[0], seq_logit=acc[1], temperature=temperature,
                                 softcap=softcap, log_sum_sq=sq, seq_sq=seq_sq)
    # The inputs are exactly representable in float64, so the only error is the kernel's own (fp32).
    assert rel(sq, want) <= tol
    want_seq = torch.zeros(S, dtype=torch.float64, device=device).index_add_(0, seq, want)
    assert rel(seq_sq, want_seq) <= tol
    # Off, the same launch gives the same lse, log-probs and sums, bit for bit.
    acc2 = [torch.zeros(S, device=device) for _ in range(2)]
    lse2, logp2 = forward_epilogue(z, labels, seq_ids=seq, seq_logp=acc2[0], seq_logit=acc2[1],
                                   temperature=temperature, softcap=softcap)
    assert torch.equal(lse, lse2) and torch.equal(logp, logp2)
    if backend == "torch" or device.type == "cpu":  # atomics on the GPU may add in another order
        assert all(torch.equal(a, b) for a, b in zip(acc, acc2))


def test_log_sum_sq_refuses_row_idx(device):
    z = torch.randn(8, 10, device=device)
    with pytest.raises(ValueError, match="compacted rows only"):
        forward_epilogue(z, torch.zeros(2, dtype=torch.long, device=device),
                         row_idx=torch.tensor([1, 3], device=device), log_sum_sq=torch.empty(2, device=device))
