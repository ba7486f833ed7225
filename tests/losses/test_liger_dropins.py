"""The named drop-ins against liger_kernel 0.8.5's own chunked losses (compiled=False, pure torch on CPU):
same constructor signatures and defaults, same inputs give the same loss, log-probs, NLL, rewards, extra
outputs and gradients (input, weight, bias) at 1e-5. logits/* are not compared: Liger averages (KTO:
sums) the logits over every padded position, ours over completion tokens only (TRL's definition)."""
import inspect

import pytest
import torch

import rdpo_fast
from rdpo_fast import FusedLinearCPOLoss, FusedLinearKTOLoss, FusedLinearORPOLoss, FusedLinearSimPOLoss

liger = pytest.importorskip("liger_kernel.chunked_loss")

PAIRS = {
    FusedLinearORPOLoss: liger.LigerFusedLinearORPOLoss,
    FusedLinearCPOLoss: liger.LigerFusedLinearCPOLoss,
    FusedLinearSimPOLoss: liger.LigerFusedLinearSimPOLoss,
    FusedLinearKTOLoss: liger.LigerFusedLinearKTOLoss,
}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("ours,theirs", PAIRS.items(), ids=[c.__name__ for c in PAIRS])
def test_same_constructor_and_forward_signatures(ours, theirs):
    mine = inspect.signature(ours.__init__).parameters
    liger_params = inspect.signature(theirs.__init__).parameters
    for name, p in liger_params.items():
        assert name in mine, name
        assert mine[name].default == p.default, (name, mine[name].default, p.default)
    assert list(mine)[: len(liger_params)] == list(liger_params)  # same positional order
    f_mine = list(inspect.signature(ours.forward).parameters)
    f_liger = list(inspect.signature(theirs.forward).parameters)
    assert f_mine[: len(f_liger)] == f_liger


def paired_batch(P=3, T=14, H=16, V=257):
    x = torch.randn(2 * P, T, H)
    w = torch.randn(V, H) / 4
    b = torch.randn(V) * 0.1
    target = torch.randint(0, V, (2 * P, T))
    target[:, :3] = -100
    target[1, 10:] = -100
    target[P + 2, 7:] = -100
    return x, w, b, target


def run_both(ours_cls, theirs_cls, kw, x, w, b, target, **fwd):
    results = []
    for cls, extra in ((theirs_cls, {"compiled": False}), (ours_cls, {})):
        xx, ww, bb = (t.clone().requires_grad_(True) for t in (x, w, b))
        loss, aux = cls(**kw, **extra)(ww, xx, target, bb, **fwd)
        loss.backward()
        results.append((loss, aux, (xx.grad, ww.grad, bb.grad)))
    return results


def check(results, skip=(2, 3), rewards=None, beta=0.1, odds=()):
    """rewards: {aux index of a reward: aux index of its log-probs} when the rewards are differences of
    two float32 sums: compared against the size of what is subtracted. odds: aux indices of ORPO's log-odds
    statistics, means of (c - r) - (log(1 - e^c) - log(1 - e^r)): Liger forms them in float32, so they too
    are compared against the size of what is subtracted, not of the (possibly small) difference."""
    (l_loss, l_aux, l_grads), (o_loss, o_aux, o_grads) = results
    assert len(o_aux) == len(l_aux)
    assert abs(o_loss.item() - l_loss.item()) <= 1e-5 * max(abs(l_loss.item()), 1e-3), (o_loss, l_loss)
    for i, (lv, ov) in enumerate(zip(l_aux, o_aux)):
        if i in skip:
            continue
        lv, ov = lv.detach(), ov.detach()
        assert ov.shape == lv.shape, i
        if i in odds:
            c, r = (l_aux[k].detach().double() for k in (0, 1))
            scale = (c.abs() + r.abs() + torch.log(-torch.expm1(c)).abs() + torch.log(-torch.expm1(r)).abs()).mean()
            assert (ov.double() - lv.double()).abs().item() <= 1e-5 * scale.item(), i
        elif rewards and i in rewards:
            logps = l_aux[rewards[i]].detach()
            scale = beta * (logps.abs() + (logps - lv / beta).abs())
            assert ((ov - lv).norm() / scale.norm()).item() <= 1e-5, i
        elif lv.abs().max() == 0:
            assert ov.abs().max() == 0, i
        else:
            assert rel(ov, lv) <= 1e-5, (i, rel(ov, lv))
    for og, lg in zip(o_grads, l_grads):
        assert rel(og, lg) <= 1e-5


@pytest.mark.parametrize("kw", [{}, {"beta": 0.5}, {"compute_nll_loss": False}])
def test_orpo(kw):
    check(run_both(FusedLinearORPOLoss, liger.LigerFusedLinearORPOLoss, kw, *paired_batch()), odds=(7, 8))


@pytest.mark.parametrize("kw", [{}, {"beta": 0.3, "alpha": 0.5, "label_smoothing": 0.1},
                                {"average_log_prob": True}, {"compute_nll_loss": False}])
def test_cpo(kw):
    check(run_both(FusedLinearCPOLoss, liger.LigerFusedLinearCPOLoss, kw, *paired_batch()))


@pytest.mark.parametrize("kw", [{}, {"gamma": 1.0, "beta": 2.0, "label_smoothing": 0.1, "alpha": 0.3},
                                {"compute_nll_loss": False}])
def test_simpo(kw):
    check(run_both(FusedLinearSimPOLoss, liger.LigerFusedLinearSimPOLoss, kw, *paired_batch()))


def kto_run(cls, kw, x, w, b, target, labels, **fwd):
    xx, ww, bb = (t.clone().requires_grad_(True) for t in (x, w, b))
    loss, aux = cls(**kw)(xx, ww, target, bb, labels, **fwd)
    loss.backward()
    return loss, aux, (xx.grad, ww.grad, bb.grad)


# Margins beta (rho - kl) of a few units: where both compute in full precision. (Saturated ones are
# compared against float64 in test_kto_fused: Liger's fp32 1 - sigmoid(x) loses them.)
@pytest.mark.parametrize("kw,with_ref,kl", [({}, False, None), ({"beta": 0.05}, False, -2.0),
                                            ({"use_ref_model": True}, True, 0.2),
                                            ({"use_ref_model": True, "average_log_prob": True}, True, None)])
def test_kto(kw, with_ref, kl):
    B, T, H, V = 7, 13, 16, 257
    x = torch.randn(B, T, H)
    w = torch.randn(V, H) / 4
    b = torch.randn(V) * 0.1
    target = torch.randint(0, V, (B, T))
    target[:, :4] = -100
    target[2, 9:] = -100
    labels = torch.tensor([True, False, True, True, False, False, True])
    fwd = {}
    if with_ref:
        fwd = {"ref_input": x + 0.2 * torch.randn_like(x), "ref_weight": w + 0.02 * torch.randn_like(w),
               "ref_bias": b.clone()}
    if kl is not None:
        fwd["kl"] = torch.tensor(kl)
    want = kto_run(liger.LigerFusedLinearKTOLoss, {**kw, "compiled": False}, x, w, b, target, labels, **fwd)
    got = kto_run(FusedLinearKTOLoss, kw, x, w, b, target, labels, **fwd)
    check((want, got), skip=(2, 3), rewards={4: 0, 5: 1} if with_ref else None, beta=kw.get("beta", 0.1))


def test_kto_precomputed_reference_and_gradient_accumulation():
    B, T, H, V = 6, 11, 8, 200
    x = torch.randn(B, T, H)
    w = torch.randn(V, H) / 4
    target = torch.randint(0, V, (B, T))
    target[:, :3] = -100
    labels = torch.tensor([True, False, True, False, True, True])
    ref_x, ref_w = x + 0.1 * torch.randn_like(x), w + 0.02 * torch.randn_like(w)
    loss_fn = FusedLinearKTOLoss(use_ref_model=True)
    whole = kto_run(FusedLinearKTOLoss, {"use_ref_model": True}, x, w, torch.zeros(V), target, labels,
                    ref_input=ref_x, ref_weight=ref_w, kl=0.1)
    with torch.no_grad():
        ref_logps, _ = rdpo_fast.sequence_logprobs(ref_x, ref_w, target)
    xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    total = 0.0
    for idx in (torch.arange(0, 3), torch.arange(3, 6)):
        loss, _ = loss_fn(xx[idx], ww, target[idx], torch.zeros(V), labels[idx], kl=0.1, ref_logps=ref_logps[idx],
                          num_sequences=B)
        loss.backward()
        total += loss.item()
    assert abs(total - whole[0].item()) <= 1e-5 * abs(whole[0].item())
    assert rel(xx.grad, whole[2][0]) <= 1e-5 and rel(ww.grad, whole[2][1]) <= 1e-5


def test_attributes_are_read_at_each_call_like_liger():
    x, w, b, target = paired_batch()
    ours = FusedLinearSimPOLoss()
    theirs = liger.LigerFusedLinearSimPOLoss(compiled=False)
    ours.beta = theirs.beta = 0.7
    ours.gamma = theirs.gamma = 0.2
    assert abs(ours(w, x, target, b)[0].item() - theirs(w, x, target, b)[0].item()) <= 1e-5
    ours.gamma = float("nan")
    with pytest.raises(ValueError, match="gamma"):
        ours(w, x, target, b)


def test_bad_inputs_are_refused_by_name():
    x, w, b, target = paired_batch()
    with pytest.raises(ValueError, match="nll_target that differs"):
        FusedLinearORPOLoss()(w, x, target, b, nll_target=target.flip(0))
    FusedLinearORPOLoss()(w, x, target, b, nll_target=target)  # the same labels: fine
    with pytest.raises(ValueError, match="alpha weights the NLL term"):
        FusedLinearCPOLoss(alpha=0.5, compute_nll_loss=False)
    with pytest.raises(ValueError, match=r"in \[0, 1\] for simpo"):
        FusedLinearSimPOLoss(label_smoothing=2.0)
    kto = FusedLinearKTOLoss()
    with pytest.raises(ValueError, match="preference_labels is required"):
        kto(x, w, target, b)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        kto(x, w, target, b, torch.ones(6))
    with pytest.raises(ValueError, match="use_ref_model=False, yet"):
        kto(x, w, target, b, torch.ones(6, dtype=torch.bool), ref_input=x, ref_weight=w)
    with pytest.raises(ValueError, match="needs ref_input and ref_weight, or ref_logps"):
        FusedLinearKTOLoss(use_ref_model=True)(x, w, target, b, torch.ones(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="kl must be"):
        kto(x, w, target, b, torch.ones(6, dtype=torch.bool), kl=torch.zeros(4))
    with pytest.raises(ValueError, match="beta must be"):
        FusedLinearKTOLoss(beta=0.0)
