"""The head's TRL options against the float64 oracle, through the Triton kernel and the torch fallback:
loss lists with loss_weights (MPO-style), WPO per-pair weights, f-divergences; ORPO where a
completion is nearly certain; apo_down's chosen-side gradient over many random draws (issue 14 item 11:
it used to lose digits to cancellation in ~1% of draws); and every bad option."""
import pytest
import torch
from test_preference_loss import LENGTH_LOSSES, REFERENCE_FREE, check_against_oracle, make_pairs, oracle, rel, run

from rdpo_fast.losses import table as loss_table
from rdpo_fast.losses.head import preference_loss

BACKENDS = ["kernel", "torch"]


def _backend(backend, device, monkeypatch):
    if backend == "torch":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        return torch.device("cpu")
    return device


def list_pairs(P, names, beta, device, spread=3.0):
    """Inputs every member of a loss list can read."""
    logps, kw = make_pairs(P, names[0], {}, beta, device, spread=spread)
    lens = make_pairs(P, "ipo", {}, beta, device)[1]
    if any(n in LENGTH_LOSSES for n in names):
        kw["chosen_lengths"], kw["rejected_lengths"] = lens["chosen_lengths"], lens["rejected_lengths"]
    elif "sft" in names:
        kw["chosen_lengths"] = lens["chosen_lengths"]
    if any(n in REFERENCE_FREE for n in names):
        logps[2] = logps[3] = None
    return logps, kw


LISTS = [
    (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]),  # MPO
    (["sigmoid", "sft"], None),  # RPO
    (["aot", "apo_zero", "ipo"], [0.5, 1.5, 0.25]),
    (["aot_unpaired", "hinge", "nca_pair"], [1.0, 0.3, 2.0]),
    (["simpo", "orpo"], [1.0, 0.5]),
    (["cpo", "sft"], [1.0, 0.7]),
    (["discopop", "sppo_hard", "apo_down", "robust"], [0.1, 0.01, 1.0, 0.4]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("names,loss_weights", LISTS, ids=["-".join(n) for n, _ in LISTS])
def test_loss_lists_match_oracle(names, loss_weights, backend, device, monkeypatch):
    device = _backend(backend, device, monkeypatch)
    beta = float(torch.empty(()).uniform_(0.05, 1.0))
    for P in (37, 1100):
        logps, kw = list_pairs(P, names, beta, device)
        kw["loss_weights"] = loss_weights
        if "robust" in names:
            kw["label_smoothing"] = 0.1
        g = torch.randn(P, device=device)
        outs, grads = run(logps, names, kw, g)
        check_against_oracle(outs, grads, *oracle(logps, names, kw, g))


WEIGHTED = [n for n, i in loss_table.LOSSES.items() if i.weighting]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_type", WEIGHTED)
def test_wpo_weights_match_oracle(loss_type, backend, device, monkeypatch):
    device = _backend(backend, device, monkeypatch)
    beta = float(torch.empty(()).uniform_(0.05, 1.0))
    P = 300
    opts = {"label_smoothing": 1e-3} if loss_type == "exo_pair" else {"soft": True} if loss_type == "rdpo" else {}
    logps, kw = make_pairs(P, loss_type, opts, beta, device)
    # WPO weights: products of two per-token probability ratios, spread over orders of magnitude.
    kw["weights"] = torch.exp(-3 * torch.rand(P, device=device)) * torch.exp(-3 * torch.rand(P, device=device))
    g = torch.randn(P, device=device)
    outs, grads = run(logps, loss_type, kw, g)
    check_against_oracle(outs, grads, *oracle(logps, loss_type, kw, g))
    # Weights of one leave the loss as it was.
    kw1 = dict(kw, weights=torch.ones(P, device=device))
    kw0 = {k: v for k, v in kw.items() if k != "weights"}
    a, b = run(logps, loss_type, kw1, g), run(logps, loss_type, kw0, g)
    for x, y in zip(a[0] + tuple(a[1]), b[0] + tuple(b[1])):
        assert x is None and y is None or torch.equal(x, y)


F_LOSSES = [("sigmoid", {}), ("rdpo", {"soft": True}), ("robust", {"label_smoothing": 0.2}), ("hinge", {}),
            ("ipo", {}), ("exo_pair", {"label_smoothing": 1e-3}), ("discopop", {"tau": 0.3}),
            ("sigmoid_norm", {}), ("sft", {})]
F_DIVS = [("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.5), ("alpha_divergence", 1.7)]
assert {n for n, _ in F_LOSSES} == {n for n, i in loss_table.LOSSES.items() if i.f_divergence}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fdiv,coef", F_DIVS, ids=[f"{f}-{a}" for f, a in F_DIVS])
def test_f_divergences_match_oracle(fdiv, coef, backend, device, monkeypatch):
    device = _backend(backend, device, monkeypatch)
    for loss_type, opts in F_LOSSES:
        beta = float(torch.empty(()).uniform_(0.05, 1.0))
        # Log-ratios of a few nats: f-scores grow like e^|rho| (forward KL, alpha), as in TRL.
        logps, kw = make_pairs(300, loss_type, opts, beta, device, spread=2.0 * beta)
        kw.update(f_divergence_type=fdiv, f_alpha_divergence_coef=coef)
        if fdiv != "alpha_divergence":
            kw.pop("f_alpha_divergence_coef")
        g = torch.randn(300, device=device)
        outs, grads = run(logps, loss_type, kw, g)
        check_against_oracle(outs, grads, *oracle(logps, loss_type, kw, g))


def test_alpha_divergence_clamps_as_trl_and_alpha_one_is_reverse_kl(device):
    P, beta = 64, 0.1
    logps, kw = make_pairs(P, "sigmoid", {}, beta, device)
    c, r, cref, rref = logps
    cref = c - torch.linspace(-300, 300, P, device=device)  # (alpha - 1) rho crosses TRL's clamp at 80
    logps = [c, r, cref, rref]
    g = torch.randn(P, device=device)
    kw_a = dict(kw, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.5)
    outs, grads = run(logps, "sigmoid", kw_a, g)
    check_against_oracle(outs, grads, *oracle(logps, "sigmoid", kw_a, g))
    kw_1 = dict(kw, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.0)
    a, b = run(logps, "sigmoid", kw_1, g), run(logps, "sigmoid", kw, g)
    for x, y in zip(a[0] + tuple(a[1]), b[0] + tuple(b[1])):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")  # log(1 - e^0), interpreted
def test_orpo_near_certain_completions(backend, device, monkeypatch):
    """Average log-probs within 1e-6..1e-1 of zero, where log(1 - e^a) needs expm1, and (kernel) exactly
    zero for some chosen completions: infinite odds, the loss is 0 and the chosen gradient its finite
    limit."""
    device = _backend(backend, device, monkeypatch)
    P = 400
    lens_c = torch.randint(1, 50, (P,), device=device)
    lens_r = torch.randint(1, 50, (P,), device=device)
    c = -lens_c * 10 ** (-6 + 5 * torch.rand(P, device=device))
    r = -lens_r * 10 ** (-3 + 3.5 * torch.rand(P, device=device))
    kw = {"beta": 0.3, "chosen_lengths": lens_c, "rejected_lengths": lens_r}
    g = torch.randn(P, device=device)
    outs, grads = run([c, r, None, None], "orpo", kw, g)
    check_against_oracle(outs, grads, *oracle([c, r, None, None], "orpo", kw, g))
    if backend == "torch":
        return  # the fallback differentiates the plain formula, whose gradient at e^a = 1 is inf * 0 = NaN
    c0 = c.clone()
    c0[:5] = 0.0
    (losses, _, _), (dc, dr, _, _) = run([c0, r, None, None], "orpo", kw, torch.ones(P, device=device))
    assert torch.all(losses[:5] == 0) and torch.isfinite(dc).all() and torch.isfinite(dr).all()
    assert torch.all(dc[:5] < 0)


def test_apo_down_chosen_gradient_over_many_draws(device):
    """2400 draws of 16 pairs (8 launches, one per beta and spread): every draw's gradients within 1e-5
    of float64, and every pair's too wherever fp32 can represent the value. Small log-ratios of the
    rejected completion (spread 0.3) are where s'(beta rho_w) - s'(beta d) cancels."""
    draws, size = 300, 16
    worst_draw = worst_pair = 0.0
    for beta in (0.05, 0.1, 0.5, 1.0):
        for spread in (3.0, 0.3):
            P = draws * size
            logps, kw = make_pairs(P, "apo_down", {}, beta, device, spread=spread)
            g = torch.randn(P, device=device)
            _, grads = run(logps, "apo_down", kw, g)
            _, want = oracle(logps, "apo_down", kw, g)
            for got, ref in zip(grads, want):
                got, ref = got.double().view(draws, size), ref.view(draws, size)
                per_draw = (got - ref).norm(dim=1) / ref.norm(dim=1)
                shown = ref.abs() > 1e-30
                per_pair = ((got - ref).abs() / ref.abs().clamp_min(1e-300))[shown]
                worst_draw = max(worst_draw, per_draw.max().item())
                worst_pair = max(worst_pair, per_pair.max().item())
    assert worst_draw <= 1e-5, worst_draw
    assert worst_pair <= 1e-5, worst_pair


def _ok(P=5):
    return [-torch.rand(P) * 10 for _ in range(4)]


def _lens(P=5):
    return torch.randint(1, 9, (P,))


BAD = [
    (["sigmoid", "dpo"], None, {}, "unknown loss_type 'dpo'"),
    ([], None, {}, "non-empty list"),
    ("sigmoid", None, {"loss_weights": [1.0, 2.0]}, "one weight per loss type"),
    (["sigmoid", "hinge"], None, {"loss_weights": [1.0, float("nan")]}, "finite"),
    (["simpo", "sigmoid"], None, {"chosen_lengths": _lens(), "rejected_lengths": _lens()}, "mixes reference-free"),
    (["cpo", "simpo"], lambda x: [x[0], x[1], None, None], {"chosen_lengths": _lens(), "rejected_lengths": _lens()},
     "implicit rewards differ"),
    (["sigmoid", "robust"], None, {"label_smoothing": 0.1}, "would also make 'sigmoid' cDPO"),
    ("orpo", None, {"chosen_lengths": _lens(), "rejected_lengths": _lens()}, "reference-free"),
    ("orpo", lambda x: [x[0], x[1], None, None], {}, "chosen_lengths is required"),
    ("orpo", lambda x: [x[0], x[1], None, None], {"label_smoothing": 0.1, "chosen_lengths": _lens(),
                                                  "rejected_lengths": _lens()}, "not used by loss_type='orpo'"),
    ("cpo", lambda x: [x[0], x[1], None, None], {"label_smoothing": 1.5}, r"in \[0, 1\] for cpo"),
    ("cpo", lambda x: [x[0], x[1], None, None], {"chosen_lengths": _lens(), "rejected_lengths": _lens()},
     "chosen_lengths is not used"),
    ("aot", None, {"label_smoothing": -0.1}, r"in \[0, 1\] for aot"),
    ("aot", None, {"weights": torch.rand(5)}, "not defined for aot"),
    (["sigmoid", "aot_unpaired"], None, {"weights": torch.rand(5)}, "not defined for aot_unpaired"),
    ("aot", lambda x: [x[0], x[1], None, None], {}, "ref_chosen_logps is None"),
    ("sft", None, {}, "chosen_lengths is required"),
    ("sft", None, {"chosen_lengths": _lens(), "rejected_lengths": _lens()}, "rejected_lengths is not used"),
    ("sft", lambda x: [x[0], x[1], x[2], None], {"chosen_lengths": _lens()}, "or neither"),
    ("sigmoid", None, {"weights": -torch.rand(5)}, ">= 0"),
    ("sigmoid", None, {"weights": torch.rand(6)}, "weights has shape"),
    ("sigmoid", None, {"weights": torch.ones(5, dtype=torch.long)}, "floating point"),
    ("sigmoid", None, {"f_divergence_type": "kl"}, "unknown f_divergence_type 'kl'"),
    ("bco_pair", None, {"f_divergence_type": "forward_kl"}, "not bco_pair"),
    (["sigmoid", "apo_zero"], None, {"f_divergence_type": "js_divergence"}, "not apo_zero"),
    ("sigmoid", None, {"f_alpha_divergence_coef": 0.3}, "only used by f_divergence_type='alpha_divergence'"),
    ("sigmoid", None, {"f_divergence_type": "forward_kl", "f_alpha_divergence_coef": 0.3}, "only used by"),
    ("sigmoid", None, {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": float("inf")}, "finite"),
]


@pytest.mark.parametrize("loss_type,modify,kw,match", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_new_options_raise(loss_type, modify, kw, match):
    logps = _ok()
    if modify is not None:
        logps = modify(logps)
    with pytest.raises(ValueError, match=match):
        preference_loss(*logps, loss_type=loss_type, **kw)


def test_sft_is_the_batch_chosen_nll_for_every_pair(device):
    P = 9
    c = -torch.rand(P, device=device) * 50
    r = -torch.rand(P, device=device) * 50
    lens = torch.randint(1, 30, (P,), device=device)
    c.requires_grad_(True)
    losses, rew_c, _ = preference_loss(c, r, None, None, loss_type="sft", chosen_lengths=lens, beta=0.2)
    nll = -c.detach().double().sum() / lens.sum()
    assert torch.allclose(losses.double(), nll.expand(P), rtol=1e-6)
    assert rel(rew_c, 0.2 * c.detach()) <= 1e-6  # no reference: rewards beta * c
    losses.mean().backward()
    assert torch.allclose(c.grad.double(), (-1.0 / lens.sum()).double().expand(P), rtol=1e-6)
