"""FusedLinearKTOLoss against its unfused float64 reference (loss, log-prob / logit / reward sums,
gradients w.r.t. input, weight, bias): several chunks of whole sequences, prompt and pad rows, saturated
and mild margins, in-pass and precomputed references, fp32 and bf16."""
import pytest
import torch

from rdpo_fast import FusedLinearKTOLoss
from rdpo_fast.losses import kto_kl_baseline
from rdpo_fast.oracle.fused import ref_fused_kto_loss, ref_sequence_logps


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def kto_batch(B, T, H, V, device, dtype=torch.float32):
    x = torch.randn(B, T, H, device=device).to(dtype)
    w = (torch.randn(V, H, device=device) / H**0.5).to(dtype)
    b = (0.5 + 0.1 * torch.randn(V, device=device)).to(dtype)
    target = torch.randint(0, V, (B, T), device=device)
    target[:, :3] = -100
    lengths = torch.randint(1, T - 2, (B,), device=device)
    target[torch.arange(T, device=device)[None, :] >= 3 + lengths[:, None]] = -100
    labels = torch.rand(B, device=device) < 0.5
    labels[0], labels[1] = True, False
    return x, w, b, target, labels, x + 0.3 * torch.randn_like(x), w + (0.05 * torch.randn_like(w.float())).to(dtype)


@pytest.mark.parametrize("kw,kl", [({"beta": 0.1}, 0.5), ({"beta": 2.0}, None),
                                   ({"use_ref_model": True, "beta": 0.5}, 0.1),
                                   ({"use_ref_model": True, "average_log_prob": True, "beta": 3.0}, -0.2)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_matches_unfused_float64(kw, kl, dtype, tol, device):
    B, T, H, V = 7, 17, 16, 500
    x, w, b, target, labels, ref_x, ref_w = kto_batch(B, T, H, V, device, dtype)
    fwd = {"ref_input": ref_x, "ref_weight": ref_w} if kw.get("use_ref_model") else {}
    if kl is not None:
        fwd["kl"] = torch.tensor(kl, device=device)
    xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    loss, aux = FusedLinearKTOLoss(**kw, workspace_budget=15 * V * 8)(xx, ww, target, bb, labels, **fwd)
    loss.backward()
    if dtype == torch.bfloat16:
        assert all(g.dtype == torch.bfloat16 for g in (xx.grad, ww.grad, bb.grad))
    fwd64 = {k: (v.double() if k in ("ref_input", "ref_weight") else v) for k, v in fwd.items()}
    xd, wd, bd = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    want, want_aux = ref_fused_kto_loss(xd, wd, target, bd, labels, **kw, **fwd64)
    want.backward()
    assert abs(loss.item() - want.item()) <= tol * abs(want.item())
    beta = kw["beta"]
    for i, (a, r) in enumerate(zip(aux, want_aux)):
        scale = max(abs(r.item()), 1e-3)
        if i >= 4 and kw.get("use_ref_model"):
            # beta (sum logp - sum ref logp): against the size of what is subtracted, as for DPO rewards.
            logps = want_aux[i - 4].item()
            scale = beta * (abs(logps) + abs(logps - r.item() / beta))
        assert abs(a.item() - r.item()) <= tol * scale, (i, a.item(), r.item())
    for g, r in zip((xx.grad, ww.grad, bb.grad), (xd.grad, wd.grad, bd.grad)):
        assert rel(g, r) <= tol


def test_kl_baseline_is_trls_clamped_mean(device):
    B, T, H, V = 5, 9, 8, 100
    x, w, b, target, _, ref_x, ref_w = kto_batch(B, T, H, V, device)
    kl = kto_kl_baseline(x, w, target, b, ref_x, ref_w)
    pol = ref_sequence_logps(x.double(), w.double(), target, b.double(), -100, False, None)
    ref = ref_sequence_logps(ref_x.double(), ref_w.double(), target, None, -100, False, None)
    assert abs(kl.item() - (pol - ref).mean().clamp(min=0).item()) <= 1e-5 * max(abs(kl.item()), 1.0)
    assert kto_kl_baseline(x, w, target, b, ref_kl_logps=pol.float() + 100.0).item() == 0.0  # clamped
