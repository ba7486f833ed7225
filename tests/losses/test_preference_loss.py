"""preference_loss for every SPEC section 4 loss_type against the float64 oracle: losses, rewards and
gradients w.r.t. all four log-probs (for a non-uniform upstream gradient, which exercises how the
batch-level losses couple the pairs), through the Triton kernel (interpreted on CPU, compiled on CUDA)
and through the torch fallback; extreme margins; equivalences between variants; every bad input.
TRL's loss lists, WPO weights and f-divergences: tests/losses/test_loss_variants.py."""
import math

import pytest
import torch

import rdpo_fast.kernels.preference_head as kern
from rdpo_fast.losses.head import LOSS_TYPES, preference_head, preference_loss
from rdpo_fast.oracle.preference import ref_preference_loss

TOL = 1e-5
LENGTH_LOSSES = ("ipo", "sigmoid_norm", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo", "cpo")

# Every loss type, each option it reads set at least once away from its default.
CASES = [
    ("sigmoid", {}),
    ("sigmoid", {"label_smoothing": 0.15}),
    ("rdpo", {"soft": True}),
    ("rdpo", {}),
    ("robust", {"label_smoothing": 0.2}),
    ("hinge", {}),
    ("ipo", {}),
    ("exo_pair", {"label_smoothing": 1e-3}),
    ("exo_pair", {"label_smoothing": 0.3}),
    ("nca_pair", {}),
    ("bco_pair", {}),
    ("sppo_hard", {}),
    ("apo_zero", {}),
    ("apo_down", {}),
    ("discopop", {}),
    ("discopop", {"tau": 0.5}),
    ("sigmoid_norm", {}),
    ("simpo", {"gamma": 0.5}),
    ("simpo", {"gamma": 0.3, "label_smoothing": 0.1}),
    ("aot", {}),
    ("aot", {"label_smoothing": 0.2}),
    ("aot_unpaired", {}),
    ("aot_unpaired", {"label_smoothing": 0.1}),
    ("orpo", {}),
    ("cpo", {}),
    ("cpo", {"label_smoothing": 0.1}),
    ("sft", {}),
    ("sft", {"no_ref": True}),
]
CASE_IDS = [lt + "".join(f"-{k}={v}" for k, v in o.items()) for lt, o in CASES]
assert {lt for lt, _ in CASES} == set(LOSS_TYPES)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make_pairs(P, loss_type, opts, beta, device, spread=3.0):
    """Realistic sequence log-probs: sums of -0.3..-3 nats per token over 1..400 tokens, with policy /
    reference log-ratios spread so beta * d covers both signs and the saturated tails."""
    len_c = torch.randint(1, 400, (P,), device=device)
    len_r = torch.randint(1, 400, (P,), device=device)
    c = -len_c * (0.3 + 2.7 * torch.rand(P, device=device))
    r = -len_r * (0.3 + 2.7 * torch.rand(P, device=device))
    cref = c - torch.randn(P, device=device) * spread / beta
    rref = r - torch.randn(P, device=device) * spread / beta
    kw = {k: v for k, v in opts.items() if k not in ("soft", "no_ref")}
    kw["beta"] = beta
    if opts.get("soft"):
        kw["soft_labels"] = torch.rand(P, device=device)
    if loss_type in LENGTH_LOSSES:
        kw["chosen_lengths"], kw["rejected_lengths"] = len_c, len_r
    if loss_type == "sft":
        kw["chosen_lengths"] = len_c
    if loss_type in REFERENCE_FREE or opts.get("no_ref"):
        cref = rref = None
    return [c, r, cref, rref], kw


def oracle(logps, loss_type, kw, upstream):
    xs = [None if t is None else t.detach().double().requires_grad_(True) for t in logps]
    kw64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()}
    losses, rew_c, rew_r = ref_preference_loss(*xs, loss_type=loss_type, **kw64)
    losses.backward(upstream.double())
    # An input the losses do not read (sft's rejected log-probs) has no .grad: its gradient is zero.
    grads = [None if x is None else torch.zeros_like(x) if x.grad is None else x.grad for x in xs]
    return (losses.detach(), rew_c.detach(), rew_r.detach()), grads


def run(logps, loss_type, kw, upstream):
    xs = [None if t is None else t.detach().clone().requires_grad_(True) for t in logps]
    losses, rew_c, rew_r = preference_loss(*xs, loss_type=loss_type, **kw)
    losses.backward(upstream)
    return (losses, rew_c, rew_r), [None if x is None else x.grad for x in xs]


def check_against_oracle(outs, grads, want_outs, want_grads):
    for name, got, want in zip(("losses", "chosen_rewards", "rejected_rewards"), outs, want_outs):
        assert got.dtype == torch.float32
        assert torch.isfinite(got).all(), name
        assert rel(got, want) <= TOL, (name, rel(got, want))
    for name, got, want in zip(("dc", "dr", "dcref", "drref"), grads, want_grads):
        assert (got is None) == (want is None), name
        if got is not None:
            assert torch.isfinite(got).all(), name
            assert rel(got, want) <= TOL, (name, rel(got, want))


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts launches of the Triton head, so a test cannot pass through a silent torch fallback."""
    calls = []
    real = kern.preference_head_fwd

    def spy(*args, **kwargs):
        calls.append(kwargs["loss_id"])
        return real(*args, **kwargs)

    monkeypatch.setattr(kern, "preference_head_fwd", spy)
    return calls


def concat(parts):
    return [None if p[0] is None else torch.cat(p) for p in zip(*parts)]


@pytest.mark.parametrize("loss_type,opts", CASES, ids=CASE_IDS)
def test_kernel_matches_oracle(loss_type, opts, device, kernel_calls):
    beta = float(torch.empty(()).uniform_(0.05, 1.0))
    # BLOCK is 1024: one partial program, one exactly-not-full, three programs with a ragged tail.
    sizes = (37, 300, 2500)
    for P in sizes:
        logps, kw = make_pairs(P, loss_type, opts, beta, device)
        g = torch.randn(P, device=device)
        outs, grads = run(logps, loss_type, kw, g)
        check_against_oracle(outs, grads, *oracle(logps, loss_type, kw, g))
    # P = 1 eight times: a lone pair in a 1024-wide block. Compared over the eight together, since a
    # single pair at a zero of a loss or derivative has no meaningful relative error in fp32.
    got, want, got_g, want_g = [], [], [], []
    for _ in range(8):
        logps, kw = make_pairs(1, loss_type, opts, beta, device)
        g = torch.randn(1, device=device)
        o, gr = run(logps, loss_type, kw, g)
        wo, wg = oracle(logps, loss_type, kw, g)
        got.append(o), want.append(wo), got_g.append(gr), want_g.append(wg)
    check_against_oracle(concat(got), concat(got_g), concat(want), concat(want_g))
    assert len(kernel_calls) == len(sizes) + 8


@pytest.mark.parametrize("loss_type,opts", CASES, ids=CASE_IDS)
def test_torch_fallback_matches_oracle(loss_type, opts, monkeypatch, kernel_calls):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    beta = float(torch.empty(()).uniform_(0.05, 1.0))
    for P in (37, 300):
        logps, kw = make_pairs(P, loss_type, opts, beta, "cpu")
        g = torch.randn(P)
        outs, grads = run(logps, loss_type, kw, g)
        check_against_oracle(outs, grads, *oracle(logps, loss_type, kw, g))
    assert kernel_calls == []


@pytest.mark.parametrize("backend", ["kernel", "torch"])
@pytest.mark.parametrize("loss_type,opts", CASES, ids=CASE_IDS)
def test_huge_margins_stay_finite_and_exact(loss_type, opts, backend, device, monkeypatch):
    if backend == "torch":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        device = "cpu"
    P = 64
    beta = 1.0
    pick = torch.tensor([-1e4, -3.0, 0.5, 1e4], device=device)
    logps, kw = make_pairs(P, loss_type, opts, beta, device)
    c, r, _, _ = logps
    if loss_type in REFERENCE_FREE:
        # x = beta (c/|y_w| - r/|y_l|) - gamma spans +-1e4 with unit lengths.
        if loss_type != "cpo":
            kw["chosen_lengths"] = torch.ones(P, device=device, dtype=torch.long)
            kw["rejected_lengths"] = torch.ones(P, device=device, dtype=torch.long)
        logps = [-1.0 - pick.abs()[torch.randint(0, 4, (P,), device=device)],
                 -1.0 - pick.abs()[torch.randint(0, 4, (P,), device=device)], None, None]
    else:
        if loss_type in LENGTH_LOSSES:
            kw["chosen_lengths"] = torch.randint(1, 5, (P,), device=device)
            kw["rejected_lengths"] = torch.randint(1, 5, (P,), device=device)
        if loss_type == "sft":
            kw["chosen_lengths"] = torch.randint(1, 5, (P,), device=device)
        rho_w = pick[torch.randint(0, 4, (P,), device=device)]
        rho_l = pick[torch.randint(0, 4, (P,), device=device)]
        logps = [c, r, c - rho_w, r - rho_l]
        if opts.get("no_ref"):
            logps[2] = logps[3] = None
    g = torch.randn(P, device=device)
    outs, grads = run(logps, loss_type, kw, g)
    check_against_oracle(outs, grads, *oracle(logps, loss_type, kw, g))


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_sigmoid_with_soft_labels_is_rdpo_and_label_smoothing_is_cdpo(backend, device, monkeypatch):
    if backend == "torch":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        device = "cpu"
    P, beta, eps = 300, 0.2, 0.15
    logps, _ = make_pairs(P, "sigmoid", {}, beta, device)
    g = torch.randn(P, device=device)
    p = torch.rand(P, device=device)

    sig_p = run(logps, "sigmoid", {"beta": beta, "soft_labels": p}, g)
    rdpo_p = run(logps, "rdpo", {"beta": beta, "soft_labels": p}, g)
    for a, b in zip(sig_p[0] + tuple(sig_p[1]), rdpo_p[0] + tuple(rdpo_p[1])):
        assert torch.equal(a, b)

    cdpo = run(logps, "sigmoid", {"beta": beta, "label_smoothing": eps}, g)
    rdpo_eps = run(logps, "rdpo", {"beta": beta, "soft_labels": torch.full((P,), 1 - eps, device=device)}, g)
    for a, b in zip(cdpo[0] + tuple(cdpo[1]), rdpo_eps[0] + tuple(rdpo_eps[1])):
        # p = 1 - eps rounds to fp32 on the host in one case and in the kernel in the other.
        assert rel(a, b) <= 1e-6

    rdpo_none = run(logps, "rdpo", {"beta": beta}, g)
    dpo = run(logps, "sigmoid", {"beta": beta}, g)
    for a, b in zip(rdpo_none[0] + tuple(rdpo_none[1]), dpo[0] + tuple(dpo[1])):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_dtypes_detached_rewards_and_partial_grads(dtype, device):
    P = 37
    logps, kw = make_pairs(P, "sigmoid", {}, 0.1, device)
    c, r, cref, rref = [t.to(dtype) for t in logps]
    c.requires_grad_(True)
    r.requires_grad_(True)
    losses, rew_c, rew_r = preference_loss(c, r, cref, rref, **kw)
    assert losses.dtype == rew_c.dtype == rew_r.dtype == torch.float32
    assert losses.requires_grad and not rew_c.requires_grad and not rew_r.requires_grad
    losses.sum().backward()
    assert c.grad.dtype == dtype and r.grad.dtype == dtype
    assert cref.grad is None and rref.grad is None
    (want, _, _), (gc, gr, _, _) = oracle([c, r, cref, rref], "sigmoid", kw, torch.ones(P, device=device))
    tol = 1e-5 if dtype == torch.float64 else 1e-2  # bf16 only in the stored gradient
    assert rel(losses, want) <= 1e-5
    assert rel(c.grad, gc) <= tol and rel(r.grad, gr) <= tol


def test_every_loss_type_has_a_kernel_build():
    # The last kernel id is KTO's, unpaired, used by rdpo_fast.losses.kto and not a preference_loss type.
    assert sorted(LOSS_TYPES.values()) == list(range(kern.NUM_LOSSES - 1))
    assert (LOSS_TYPES["aot"], LOSS_TYPES["sft"], kern.KTO) == (kern.AOT, kern.SFT, kern.NUM_LOSSES - 1)
    assert sorted(s["constexprs"]["LOSS"] for s in kern.COMPILE_SPECS) == list(range(kern.NUM_LOSSES))
    # The kernel's branches name the ids (constexpr globals): each name is its table entry's id.
    for name, loss_id in LOSS_TYPES.items():
        assert getattr(kern, name.upper()) == loss_id, name


def test_preference_head_is_autograd_free(device):
    logps, kw = make_pairs(37, "rdpo", {"soft": True}, 0.1, device)
    logps = [t.requires_grad_(True) for t in logps]
    losses, rew_c, rew_r, derivs = preference_head(*logps, loss_type="rdpo", **kw)
    for t in (losses, rew_c, rew_r, *derivs):
        assert t.dtype == torch.float32 and t.shape == (37,) and not t.requires_grad
    assert torch.equal(derivs[2], -derivs[0]) and torch.equal(derivs[3], -derivs[1])


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_empty_batch(backend, device, monkeypatch):
    if backend == "torch":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        device = "cpu"
    z = torch.zeros(0, device=device, requires_grad=True)
    losses, rew_c, rew_r = preference_loss(z, z, z, z)
    assert losses.shape == rew_c.shape == rew_r.shape == (0,)
    losses.sum().backward()
    assert z.grad.shape == (0,)


P_BAD = 5


def _ok():
    c, r, cref, rref = (-torch.rand(P_BAD) * 10 for _ in range(4))
    return [c, r, cref, rref]


def _lens(n=P_BAD):
    return torch.randint(1, 9, (n,))


# (loss_type, logps modifier, kwargs, message fragment)
BAD = [
    ("dpo", None, {}, "unknown loss_type 'dpo'; valid: sigmoid, rdpo"),
    ("sigmoid", lambda x: [x[0], x[1][:-1], x[2], x[3]], {}, "policy_rejected_logps has shape"),
    ("sigmoid", lambda x: [x[0], x[1], x[2], torch.zeros(P_BAD + 1)], {}, "ref_rejected_logps has shape"),
    ("sigmoid", lambda x: [x[0], x[1], torch.zeros(P_BAD, device="meta"), x[3]], {}, "is on meta"),
    ("sigmoid", lambda x: [t.view(1, -1) for t in x], {}, "must be 1-D"),
    ("sigmoid", lambda x: [x[0], x[1], None, x[3]], {}, "ref_chosen_logps is None"),
    ("hinge", lambda x: [x[0], x[1], x[2], None], {}, "ref_rejected_logps is None"),
    ("simpo", None, {"chosen_lengths": _lens(), "rejected_lengths": _lens()}, "reference-free"),
    ("sigmoid", lambda x: [x[0].long(), x[1], x[2], x[3]], {}, "floating point"),
    ("sigmoid", lambda x: [x[0], x[1], x[2].int(), x[3]], {}, "floating point"),
    ("rdpo", None, {"soft_labels": torch.rand(P_BAD + 1)}, "soft_labels has shape"),
    ("rdpo", None, {"soft_labels": torch.rand(1, P_BAD)}, "soft_labels must be 1-D"),
    ("rdpo", None, {"soft_labels": torch.tensor([0.5, 1.5, 0.5, 0.5, 0.5])}, r"in \[0, 1\]"),
    ("rdpo", None, {"soft_labels": torch.tensor([0.5, -0.1, 0.5, 0.5, 0.5])}, r"in \[0, 1\]"),
    ("rdpo", None, {"soft_labels": torch.tensor([0.5, math.nan, 0.5, 0.5, 0.5])}, "NaN"),
    ("sigmoid", None, {"soft_labels": torch.rand(P_BAD), "label_smoothing": 0.1}, "give one"),
    ("hinge", None, {"soft_labels": torch.rand(P_BAD)}, "soft_labels are not used by loss_type='hinge'"),
    ("robust", None, {"soft_labels": torch.rand(P_BAD), "label_smoothing": 0.1}, "soft_labels are not used"),
    ("hinge", None, {"label_smoothing": 0.1}, "label_smoothing=0.1 is not used by loss_type='hinge'"),
    ("rdpo", None, {"label_smoothing": 0.1}, "not used by loss_type='rdpo'"),
    ("discopop", None, {"label_smoothing": 0.1}, "not used by loss_type='discopop'"),
    ("sigmoid", None, {"label_smoothing": 1.5}, r"in \[0, 1\] for sigmoid"),
    ("sigmoid", None, {"label_smoothing": -0.1}, r"in \[0, 1\] for sigmoid"),
    ("simpo", lambda x: [x[0], x[1], None, None],
     {"label_smoothing": 1.2, "chosen_lengths": _lens(), "rejected_lengths": _lens()}, r"in \[0, 1\] for simpo"),
    ("robust", None, {"label_smoothing": 0.5}, r"in \[0, 0.5\) for robust"),
    ("robust", None, {"label_smoothing": -0.1}, r"in \[0, 0.5\) for robust"),
    ("exo_pair", None, {}, r"in \(0, 0.5\] for exo_pair"),
    ("exo_pair", None, {"label_smoothing": 0.6}, r"in \(0, 0.5\] for exo_pair"),
    ("sigmoid", None, {"gamma": 0.5}, "gamma=0.5 is only used by loss_type='simpo'"),
    ("ipo", None, {}, "chosen_lengths is required"),
    ("sigmoid_norm", None, {"chosen_lengths": _lens()}, "rejected_lengths is required"),
    ("simpo", lambda x: [x[0], x[1], None, None], {"rejected_lengths": _lens()}, "chosen_lengths is required"),
    ("ipo", None, {"chosen_lengths": torch.tensor([1, 2, 0, 4, 5]), "rejected_lengths": _lens()}, "> 0"),
    ("ipo", None, {"chosen_lengths": _lens(), "rejected_lengths": -_lens()}, "> 0"),
    ("ipo", None, {"chosen_lengths": _lens(), "rejected_lengths": torch.full((P_BAD,), math.inf)}, "finite"),
    ("ipo", None, {"chosen_lengths": _lens(P_BAD + 1), "rejected_lengths": _lens()}, "chosen_lengths has shape"),
    ("sigmoid", None, {"chosen_lengths": _lens(), "rejected_lengths": _lens()}, "chosen_lengths is not used"),
    ("sigmoid", None, {"beta": 0.0}, "beta must be > 0"),
    ("sigmoid", None, {"beta": -0.1}, "beta must be > 0"),
    ("sigmoid", None, {"beta": math.nan}, "beta must be a finite"),
    ("discopop", None, {"tau": 0.0}, "tau must be > 0 for discopop"),
    ("discopop", None, {"tau": -1.0}, "tau must be > 0 for discopop"),
    ("sigmoid", None, {"tau": 0.1}, "tau=0.1 is only used by loss_type='discopop'"),
]


@pytest.mark.parametrize("loss_type,modify,kw,match", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_input_raises(loss_type, modify, kw, match):
    logps = _ok()
    if modify is not None:
        logps = modify(logps)
    with pytest.raises(ValueError, match=match):
        preference_loss(*logps, loss_type=loss_type, **kw)


def test_non_tensor_logps_is_a_type_error():
    c, r, cref, rref = _ok()
    with pytest.raises(TypeError, match="policy_rejected_logps must be a torch.Tensor"):
        preference_loss(c, r.tolist(), cref, rref)
