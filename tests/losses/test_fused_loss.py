"""FusedLinearPreferenceLoss against the unfused float64 reference (full logits), Liger parity, gradient
accumulation and bad input. Real kernels: interpreted on CPU, compiled on CUDA."""
import pytest
import torch

import rdpo_fast
from rdpo_fast import FusedLinearPreferenceLoss
from rdpo_fast.oracle.fused import ref_fused_preference_loss

# (loss_type, constructor options, pass soft labels?)
CASES = [
    ("sigmoid", {}, False),
    ("sigmoid", {"label_smoothing": 0.2}, False),
    ("rdpo", {}, True),
    ("robust", {"label_smoothing": 0.1}, False),
    ("hinge", {"beta": 0.5}, False),
    ("ipo", {}, False),
    ("exo_pair", {"label_smoothing": 1e-3}, False),
    ("nca_pair", {}, False),
    ("bco_pair", {}, False),
    ("sppo_hard", {}, False),
    ("apo_zero", {}, False),
    ("apo_down", {}, False),
    ("discopop", {"discopop_tau": 0.3}, False),
    ("sigmoid_norm", {}, False),
    ("simpo", {"use_ref_model": False, "gamma": 0.4, "beta": 2.0}, False),
]


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def batch(P, T, H, V, device, dtype=torch.float32, prompt=4):
    x = torch.randn(2 * P, T, H, device=device).to(dtype)
    w = (torch.randn(V, H, device=device) / H**0.5).to(dtype)
    # A bias with a clear mean keeps the logits/* means away from zero, where a float32 sum of
    # cancelling terms has no relative precision to compare.
    b = (0.5 + torch.randn(V, device=device) * 0.1).to(dtype)
    target = torch.randint(0, V, (2 * P, T), device=device)
    target[:, :prompt] = -100  # prompt
    lengths = torch.randint(1, T - prompt + 1, (2 * P,), device=device)
    pad = torch.arange(T, device=device)[None, :] >= prompt + lengths[:, None]
    target[pad] = -100
    ref_x = x + 0.3 * torch.randn_like(x)
    ref_w = w + (0.05 * torch.randn_like(w.float())).to(dtype)
    return x, w, b, target, ref_x, ref_w


def run_ours(opts, x, w, b, target, **fwd):
    x, w, b = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    loss_fn = FusedLinearPreferenceLoss(**opts)
    loss, aux = loss_fn(w, x, target, b, **fwd)
    loss.backward()
    return loss, aux, (x.grad, w.grad, b.grad)


def run_ref(opts, x, w, b, target, **fwd):
    opts = dict(opts)
    if "discopop_tau" in opts:
        opts["tau"] = opts.pop("discopop_tau")
    opts.pop("workspace_budget", None)
    opts.pop("dw_accumulation", None)
    opts.pop("dw_ring_budget", None)
    opts.pop("epilogue", None)
    for k in ("ref_input", "ref_weight", "ref_bias"):
        if fwd.get(k) is not None:
            fwd[k] = fwd[k].double()
    if fwd.get("soft_labels") is not None:
        fwd["soft_labels"] = fwd["soft_labels"].double()
    xd, wd, bd = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    loss, aux = ref_fused_preference_loss(wd, xd, target, bd, **opts, **fwd)
    loss.backward()
    return loss, aux, (xd.grad, wd.grad, bd.grad)


def assert_close(ours, ref, tol, skip_logits_mean=False, beta=0.1, reference_free=False):
    """Rewards beta * (c - c_ref) are differences of two O(|c|) float32 sequence sums, so their error is
    measured against the size of what is subtracted, beta * (|c| + |c_ref|), not against the difference:
    a float32 sum of log-probs cannot locate a small difference of large sums more finely than that."""
    (loss, aux, grads), (rloss, raux, rgrads) = ours, ref
    assert torch.isfinite(loss)
    assert abs(loss.item() - rloss.item()) <= tol * max(abs(rloss.item()), 1e-3), (loss.item(), rloss.item())
    names = ("chosen_logps", "rejected_logps", "chosen_logits_mean", "rejected_logits_mean", "nll_loss",
             "chosen_rewards", "rejected_rewards")
    for name, a, r in zip(names, aux, raux):
        if skip_logits_mean and "logits_mean" in name:
            continue
        if r.abs().max() == 0:
            assert a.abs().max() <= tol, name
        elif name.endswith("rewards") and not reference_free:
            logps = (raux[0] if name.startswith("chosen") else raux[1]).detach()
            ref_logps = logps - r.detach() / beta
            scale = beta * (logps.abs() + ref_logps.abs())
            err = ((a.double() - r.detach()).norm() / scale.norm()).item()
            assert err <= tol, (name, err)
        else:
            assert rel(a, r) <= tol, (name, rel(a, r))
    for name, g, rg in zip(("d_input", "d_weight", "d_bias"), grads, rgrads):
        assert rel(g, rg) <= tol, (name, rel(g, rg))


@pytest.mark.parametrize("loss_type,opts,soft", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_loss_type_matches_unfused_float64(loss_type, opts, soft, device):
    P, T, H, V = 3, 19, 16, 600
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    opts = {"loss_type": loss_type, "workspace_budget": 20 * V * 8, **opts}  # several chunks of pairs
    fwd = {}
    if opts.get("use_ref_model", True):
        fwd.update(ref_input=ref_x, ref_weight=ref_w)
    if soft:
        fwd["soft_labels"] = torch.rand(P, device=device)
    assert_close(run_ours(opts, x, w, b, target, **fwd), run_ref(opts, x, w, b, target, **fwd), 1e-5,
                 beta=opts.get("beta", 0.1), reference_free=loss_type == "simpo")


@pytest.mark.parametrize("opts", [
    {"compute_nll_loss": True, "alpha": 0.7},
    {"average_log_prob": True, "beta": 1.0},
    {"ld_alpha": 0.4},
    {"ld_alpha": 0.0, "compute_nll_loss": True, "average_log_prob": True},
])
def test_nll_average_and_ld_dpo(opts, device):
    P, T, H, V = 4, 17, 12, 500
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    opts = {"workspace_budget": 25 * V * 8, **opts}
    fwd = {"ref_input": ref_x, "ref_weight": ref_w}
    assert_close(run_ours(opts, x, w, b, target, **fwd), run_ref(opts, x, w, b, target, **fwd), 1e-5,
                 beta=opts.get("beta", 0.1))


@pytest.mark.parametrize("dw_accumulation", ["fp32", "weight"])
def test_bf16_inputs(dw_accumulation, device):
    P, T, H, V = 2, 21, 32, 700
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device, dtype=torch.bfloat16)
    opts = {"compute_nll_loss": True, "dw_accumulation": dw_accumulation, "workspace_budget": 20 * V * 8}
    fwd = {"ref_input": ref_x, "ref_weight": ref_w}
    ours = run_ours(opts, x, w, b, target, **fwd)
    assert all(g.dtype == torch.bfloat16 for g in ours[2])
    assert_close(ours, run_ref(opts, x, w, b, target, **fwd), 2e-2)


def test_in_pass_reference_equals_precomputed(device):
    P, T, H, V = 3, 15, 16, 400
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    in_pass = run_ours({}, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    with torch.no_grad():
        sums, _ = rdpo_fast.sequence_logprobs(ref_x, ref_w, target)
    pre = run_ours({}, x, w, b, target, ref_chosen_logps=sums[:P], ref_rejected_logps=sums[P:])
    # Equal up to the order of float32 atomic additions in the sequence sums (bitwise equal on CPU);
    # rewards, differences of such sums, are compared against the size of what is subtracted.
    assert rel(in_pass[0], pre[0]) <= 1e-6
    for i in (0, 1, 2, 3, 4):
        assert rel(in_pass[1][i], pre[1][i]) <= 1e-6, i
    for i, logps in ((5, pre[1][0]), (6, pre[1][1])):
        scale = 0.1 * (logps.abs() + (logps - pre[1][i] / 0.1).abs())
        assert ((in_pass[1][i] - pre[1][i]).norm() / scale.norm()).item() <= 1e-6, i
    for a, c in zip(in_pass[2], pre[2]):
        assert rel(a, c) <= 1e-6


def test_gradient_accumulation_is_exact(device):
    P, T, H, V = 8, 13, 16, 300
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    opts = {"compute_nll_loss": True, "alpha": 0.5}
    whole_loss, _, whole = run_ours(opts, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    n_tok = int((target[:P] != -100).sum())
    xl, wl, bl = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    loss_fn = FusedLinearPreferenceLoss(**opts)
    total = 0.0
    for k in range(4):  # micro-batches of 2 pairs, each with its chosen and rejected rows
        idx = torch.cat([torch.arange(2 * k, 2 * k + 2), P + torch.arange(2 * k, 2 * k + 2)]).to(device)
        loss, _ = loss_fn(wl, xl[idx], target[idx], bl, ref_x[idx], ref_w,
                          num_pairs=P, num_chosen_tokens=n_tok)
        loss.backward()
        total += loss.item()
    assert abs(total - whole_loss.item()) <= 1e-5 * abs(whole_loss.item())
    for g, want in zip((xl.grad, wl.grad, bl.grad), whole):
        assert rel(g, want) <= 1e-5


def test_grad_output_scales_gradients(device):
    x, w, b, target, ref_x, ref_w = batch(2, 11, 8, 200, device)
    _, _, g1 = run_ours({}, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    xx = x.detach().clone().requires_grad_(True)
    loss, _ = FusedLinearPreferenceLoss()(w, xx, target, b, ref_x, ref_w)
    (3.5 * loss).backward()
    assert rel(xx.grad, 3.5 * g1[0]) <= 1e-6


def test_no_grad_forward_matches(device):
    x, w, b, target, ref_x, ref_w = batch(2, 11, 8, 200, device)
    loss, aux, _ = run_ours({}, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    with torch.no_grad():
        loss2, aux2 = FusedLinearPreferenceLoss()(w, x, target, b, ref_x, ref_w)
    assert torch.equal(loss.detach(), loss2)
    for a, c in zip(aux, aux2):
        assert torch.equal(a, c)


def _bad_inputs():
    x, w, b, target, ref_x, ref_w = batch(2, 9, 8, 100, torch.device("cpu"))
    return x, w, b, target, ref_x, ref_w


@pytest.mark.parametrize("ctor,match", [
    ({"loss_type": "dpo_typo"}, "unknown loss_type"),
    ({"loss_type": "robust", "label_smoothing": 0.5}, "label_smoothing"),
    ({"loss_type": "exo_pair", "label_smoothing": 0.0}, "label_smoothing"),
    ({"loss_type": "hinge", "label_smoothing": 0.1}, "label_smoothing"),
    ({"loss_type": "sigmoid", "gamma": 0.5}, "gamma"),
    ({"loss_type": "simpo"}, "reference-free"),
    ({"beta": 0.0}, "beta"),
    ({"ld_alpha": 1.5}, "ld_alpha"),
    ({"alpha": 0.5}, "compute_nll_loss"),
])
def test_bad_constructor_options(ctor, match):
    with pytest.raises(ValueError, match=match):
        FusedLinearPreferenceLoss(**ctor)


def test_bad_forward_inputs():
    x, w, b, target, ref_x, ref_w = _bad_inputs()
    f = FusedLinearPreferenceLoss()
    with pytest.raises(ValueError, match="even"):
        f(w, x[:3], target[:3], b, ref_x[:3], ref_w)
    with pytest.raises(ValueError, match="labels has shape"):
        f(w, x, target[:, :-1], b, ref_x, ref_w)
    with pytest.raises(ValueError, match=r"_input must be \[2B, T, H\]"):
        f(w, x[0], target, b, ref_x, ref_w)
    with pytest.raises(ValueError, match="hidden's last dimension"):
        f(w, x[..., :-1], target, b, ref_x, ref_w)
    with pytest.raises(ValueError, match="needs ref_input"):
        f(w, x, target, b)
    with pytest.raises(ValueError, match="not both"):
        f(w, x, target, b, ref_x, ref_w, ref_chosen_logps=torch.zeros(2), ref_rejected_logps=torch.zeros(2))
    with pytest.raises(ValueError, match="ref_chosen_logps must be a tensor of shape"):
        f(w, x, target, b, ref_chosen_logps=torch.zeros(3), ref_rejected_logps=torch.zeros(2))
    empty = target.clone()
    empty[3] = -100
    with pytest.raises(ValueError, match="sequence 3 .* no completion token"):
        f(w, x, empty, b, ref_x, ref_w)
    with pytest.raises(ValueError, match="target holds 100"):
        f(w, x, target.masked_fill(target == target[0, -1], 100), b, ref_x, ref_w)
    with pytest.raises(ValueError, match="ref_weight has a vocabulary of 99"):
        f(w, x, target.clamp_max(98), b, ref_x, ref_w[:99])
    with pytest.raises(ValueError, match="num_pairs"):
        f(w, x, target, b, ref_x, ref_w, num_pairs=0)


def test_bad_soft_labels():
    x, w, b, target, ref_x, ref_w = _bad_inputs()
    rdpo = FusedLinearPreferenceLoss(loss_type="rdpo")
    with pytest.raises(ValueError, match=r"soft_labels must be a tensor of shape \[2\]"):
        rdpo(w, x, target, b, ref_x, ref_w, soft_labels=torch.rand(3))
    with pytest.raises(ValueError, match=r"soft_labels must lie in \[0, 1\]"):
        rdpo(w, x, target, b, ref_x, ref_w, soft_labels=torch.tensor([0.5, 1.2]))
    with pytest.raises(ValueError, match=r"soft_labels must lie in \[0, 1\]"):
        rdpo(w, x, target, b, ref_x, ref_w, soft_labels=torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="soft_labels are read by"):
        FusedLinearPreferenceLoss(loss_type="ipo")(w, x, target, b, ref_x, ref_w, soft_labels=torch.rand(2))
    with pytest.raises(ValueError, match="use_ref_model=False, yet"):
        FusedLinearPreferenceLoss(use_ref_model=False)(w, x, target, b, ref_x, ref_w)


def test_metrics_use_trl_names_and_values(device):
    from rdpo_fast.losses.metrics import preference_metrics

    x, w, b, target, ref_x, ref_w = batch(3, 11, 8, 200, device)
    loss, aux = FusedLinearPreferenceLoss(compute_nll_loss=True)(w, x, target, b, ref_x, ref_w)
    m = preference_metrics(aux, prefix="eval_")
    assert set(m) == {"eval_" + k for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                            "rewards/margins", "logps/chosen", "logps/rejected",
                                            "logits/chosen", "logits/rejected", "nll_loss")}
    chosen, rejected = aux[5], aux[6]
    assert m["eval_rewards/accuracies"] == pytest.approx((chosen > rejected).float().mean().item())
    assert m["eval_rewards/margins"] == pytest.approx((chosen - rejected).mean().item(), rel=1e-6)
    assert m["eval_logps/chosen"] == pytest.approx(aux[0].mean().item(), rel=1e-6)


def test_enclosing_autocast_changes_nothing(device):
    x, w, b, target, ref_x, ref_w = batch(2, 11, 8, 200, device)
    loss, aux, grads = run_ours({}, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    with torch.autocast(device.type, dtype=dtype):
        loss2, aux2, grads2 = run_ours({}, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    assert loss2.dtype == torch.float32 and rel(loss2, loss) <= 1e-6
    for g, g2 in zip(grads, grads2):
        assert g2.dtype == torch.float32 and rel(g2, g) <= 1e-6
