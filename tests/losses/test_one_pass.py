"""epilogue="one_pass" (issue 24, item 2): the forward epilogue's kernel writes S = (onehot - softmax) *
d transform over the logits and the gradient pass applies each row's g as a scale around the dX, dW and
d bias GEMMs. Against the unfused float64 oracle at the fused-loss tests' tolerances (fp32 1e-5, bf16
2e-2, fp16 5e-3) for values and the gradients of input, weight and bias: per-pair and batch-level (aot)
losses, NLL, LD-DPO, WPO, softcap + temperature, every dW accumulation, several chunks, prompt and pad
rows, V no multiple of any block; confident tokens in bf16; KTO; packed rows. Against the two-pass
schedule (the statistics bit for bit, the gradients to fp32 rounding); the kernel against its torch twin,
its persistent loop included; which passes over the logits each schedule makes; the refusals."""
import pytest
import torch
from test_fused_loss import assert_close, batch, rel, run_ours, run_ref
from test_kto_fused import kto_batch
from test_packed_loss import run_packed

import rdpo_fast.losses.fused_pass as fp
from rdpo_fast import FusedLinearKTOLoss, FusedLinearPreferenceLoss
from rdpo_fast.kernels.logprob_onepass import logprob_onepass
from rdpo_fast.ops.epilogue import forward_epilogue, grad_epilogue, onepass_epilogue
from rdpo_fast.oracle.fused import ref_fused_kto_loss
from rdpo_fast.oracle.logprobs import transform_logits

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
DTYPES = list(TOL)
P, T, H, V = 4, 23, 20, 601  # V, H: no multiple of any block
CHUNK = 12  # rows of logits per chunk: about a pair, so several chunks


def _elt(dtype):
    return torch.empty((), dtype=dtype).element_size()


def _ws(dtype):
    """A workspace budget of CHUNK rows (the interpreter holds a copy: twice the element size)."""
    return CHUNK * V * 2 * _elt(dtype)


def _ring_budget(kind, dtype):
    """'several': two chunks beside the fp32 accumulator (several flushes); 'single': every row."""
    row = (V + H) * _elt(dtype)
    return 4 * V * H + 2 * CHUNK * row if kind == "several" else 2 * P * T * row


CASES = {
    "sigmoid-nll": {"compute_nll_loss": True, "alpha": 0.7},
    "aot": {"loss_type": "aot"},
    "ld-dpo": {"ld_alpha": 0.4, "compute_nll_loss": True},
    "wpo": {"use_weighting": True},
    "ipo-softcap-temperature": {"loss_type": "ipo", "softcap": 3.0, "temperature": 0.7},
    "rdpo-weight-dw": {"loss_type": "rdpo", "dw_accumulation": "weight"},
    "mpo-ring-several": {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0],
                         "dw_accumulation": "ring", "dw_ring_budget": "several"},
    "aot-ring-single": {"loss_type": "aot", "dw_accumulation": "ring", "dw_ring_budget": "single"},
}


def _opts(case, dtype, epilogue="one_pass"):
    opts = {"workspace_budget": _ws(dtype), "epilogue": epilogue, **CASES[case]}
    if "dw_ring_budget" in opts:
        opts["dw_ring_budget"] = _ring_budget(opts["dw_ring_budget"], dtype)
    return opts


def _fwd(opts, ref_x, ref_w):
    fwd = {"ref_input": ref_x, "ref_weight": ref_w}
    if opts.get("loss_type") == "rdpo":
        fwd["soft_labels"] = torch.rand(P, device=ref_x.device)
    return fwd


@pytest.fixture
def passes(monkeypatch):
    """Counts of the passes over logits the chunk pass makes: forward epilogue, one-pass epilogue, dZ
    kernel, and the separate S pass."""
    seen = {"forward": 0, "one_pass": 0, "dz": 0, "s_alone": 0}

    def spy(name, fn):
        def wrapped(*a, **k):
            seen[name] += 1
            return fn(*a, **k)
        return wrapped

    for name, attr in (("forward", "forward_epilogue"), ("one_pass", "onepass_epilogue"), ("dz", "grad_epilogue"),
                       ("s_alone", "unscaled_grad_epilogue")):
        monkeypatch.setattr(fp, attr, spy(name, getattr(fp, attr)))
    return seen


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_one_pass_matches_float64(case, dtype, passes, device):
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device, dtype=dtype)
    opts = _opts(case, dtype)
    fwd = _fwd(opts, ref_x, ref_w)
    ours = run_ours(opts, x, w, b, target, **fwd)
    chunks = passes["one_pass"] + passes["forward"]
    assert chunks >= 3, passes  # several chunks, or the test would not exercise the schedule
    assert passes["dz"] == 0  # dZ is never formed
    assert all(g.dtype == dtype for g in ours[2])
    assert_close(ours, run_ref(opts, x, w, b, target, **fwd), TOL[dtype], beta=opts.get("beta", 0.1))


@pytest.mark.parametrize("twin", [False, True], ids=["interpreter", "torch-twin"])
@pytest.mark.parametrize("case", ["sigmoid-nll", "aot", "wpo", "ipo-softcap-temperature", "mpo-ring-several"])
def test_one_pass_agrees_with_two_pass(case, twin, device, monkeypatch):
    """The statistics come from the same sweep in the same order: the loss and the metrics bit for bit.
    The gradients differ only in where g is multiplied in: fp32 rounding."""
    if twin:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # rdpo_fast.ops.backend: the torch twins
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    fwd = _fwd(CASES[case], ref_x, ref_w)
    two = run_ours(_opts(case, torch.float32, "two_pass"), x, w, b, target, **fwd)
    one = run_ours(_opts(case, torch.float32), x, w, b, target, **fwd)
    assert one[0].item() == two[0].item()
    for a, c in zip(one[1], two[1]):
        assert torch.equal(a, c)
    for name, g1, g2 in zip(("d_input", "d_weight", "d_bias"), one[2], two[2]):
        assert rel(g1, g2) <= 1e-6, (name, rel(g1, g2))


@pytest.mark.parametrize("case,fused,s_alone", [
    ("sigmoid-nll", "every", 0),       # per-pair: S from each chunk's own epilogue kernel
    ("aot", 1, "rest"),                # two-phase: the last chunk's kept logits; the recomputed ones apart
    ("aot-ring-single", 1, "rest"),
])
def test_one_pass_reads_each_chunk_once(case, fused, s_alone, passes, device):
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    run_ours(_opts(case, torch.float32), x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    k = passes["one_pass"] + passes["forward"]
    assert k >= 3 and passes["dz"] == 0
    assert passes["one_pass"] == (k if fused == "every" else fused)
    assert passes["s_alone"] == (k - 1 if s_alone == "rest" else s_alone)


def test_forward_only_writes_no_s(passes, device):
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    loss_fn = FusedLinearPreferenceLoss(epilogue="one_pass", workspace_budget=_ws(torch.float32))
    with torch.no_grad():
        loss, _ = loss_fn(w, x, target, b, ref_x, ref_w)
    assert passes["one_pass"] == passes["s_alone"] == passes["dz"] == 0 and passes["forward"] >= 3
    want, _ = FusedLinearPreferenceLoss(workspace_budget=_ws(torch.float32))(w, x, target, b, ref_x, ref_w)
    assert loss.item() == want.item()


def test_token_stats_are_read_before_s(passes, device):
    """TRL's entropy and token accuracy read the raw logits after the forward epilogue: S is then written
    by a separate pass (no saving), and the metrics equal the two-pass schedule's."""
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    with torch.no_grad():
        top = (x @ w.t() + b).argmax(-1)
    target = torch.where((target != -100) & (torch.rand(target.shape, device=device) < 0.4), top, target)
    out = {}
    for ep in ("two_pass", "one_pass"):
        xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        loss_fn = FusedLinearPreferenceLoss(epilogue=ep, workspace_budget=_ws(torch.float32))
        loss, _, stats = loss_fn(ww, xx, target, bb, ref_x, ref_w, return_token_stats=True)
        loss.backward()
        out[ep] = (stats, (xx.grad, ww.grad, bb.grad))
    assert passes["one_pass"] == 0 and passes["s_alone"] == passes["forward"] // 2 >= 3
    (s2, g2), (s1, g1) = out["two_pass"], out["one_pass"]
    assert s1["entropy_sum"].item() == s2["entropy_sum"].item()
    assert s1["chosen_top1"].item() == s2["chosen_top1"].item() > 0
    assert all(rel(a, c) <= 1e-6 for a, c in zip(g1, g2))


def test_confident_tokens_in_bf16(device):
    """Labels the model is sure of (p(label) ~ 0.999, as a trained head gives on its own data): dZ's label
    column is 1 - p, tiny. S keeps the onehot inside, so 1 - p is formed in fp32 before the one rounding
    to bf16; stored as p alone, with the 1 added back after rounding, the gradient would be off by ~50%
    in L2 here."""
    Hc = 64
    x, w, b, target, ref_x, ref_w = batch(P, T, Hc, V, device, dtype=torch.bfloat16)
    keep = target != -100
    labels = target.clamp_min(0)
    # Each hidden state points along its label's weight row u, x = s u, with s set per token (bisection)
    # so that p(label) = 0.9995: the label's logit lead s (|w_l| - u.w_j) + b_l - b_j grows with s
    # (Cauchy-Schwarz), so p(label) does too, whatever the random weights.
    wf, bf = w.float(), b.float()
    u = torch.nn.functional.normalize(wf[labels], dim=-1)
    proj, lab = u @ wf.t(), labels[..., None]

    def p_label(scale):
        return torch.softmax(scale[..., None] * proj + bf, -1).gather(-1, lab).squeeze(-1)

    lo, hi = torch.zeros(labels.shape, device=device), torch.full(labels.shape, 1e4, device=device)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = p_label(mid) < 0.9995
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    s = hi
    x = torch.where(keep[..., None], s[..., None] * u, x.float()).to(torch.bfloat16)
    with torch.no_grad():
        p = torch.softmax((x.float() @ wf.t() + bf)[keep], -1).gather(1, labels[keep][:, None])
    assert p.median() > 0.999 and p.min() > 0.95
    # The bf16 logits (|z| ~ 19 here) carry rounding of ~0.04, which 1 - p inherits relatively: against
    # float64 the default two-pass schedule's gradients are ~3-4% off in this regime too (measured over
    # seeds), beyond the 2e-2 of ordinary bf16 inputs. What one-pass must show is that it adds nothing
    # there (storing p and adding the 1 back would be ~50% off): its error is two-pass's.
    fwd = {"ref_input": ref_x, "ref_weight": ref_w}
    errors = {}
    for epilogue in ("two_pass", "one_pass"):
        opts = {"compute_nll_loss": True, "workspace_budget": _ws(torch.bfloat16), "epilogue": epilogue}
        ours, want = run_ours(opts, x, w, b, target, **fwd), run_ref(opts, x, w, b, target, **fwd)
        assert rel(ours[0], want[0]) <= TOL[torch.bfloat16]
        errors[epilogue] = [float(rel(g, gw)) for g, gw in zip(ours[2], want[2])]
    for one, two in zip(errors["one_pass"], errors["two_pass"]):
        assert one <= 1.1 * two + 1e-3, errors


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("programs", [None, 1, 2])
@pytest.mark.parametrize("transform", [{}, {"softcap": 2.5, "temperature": 0.8}])
def test_kernel_against_torch_twin(transform, programs, dtype, device, monkeypatch):
    """The kernel (interpreted; a persistent grid of 1 or 2 programs takes several row blocks each) against
    forward_epilogue + grad_epilogue with g = 1 in torch: statistics, sequence sums and S."""
    M, Vk, n_seq = 150, 333, 7  # three row blocks of the interpreter's 64 rows; the last one partial
    z = (torch.randn(M + 5, Vk, device=device) * 3).to(dtype)  # rows past M must stay untouched
    labels = torch.randint(0, Vk, (M,), device=device)
    seq = torch.randint(0, n_seq, (M,), device=device)

    def accs():
        return [torch.zeros(n_seq, device=device) for _ in range(3)] + [torch.empty(M, device=device)]

    got_z, got = z.clone(), accs()
    if device.type == "cpu" and programs is not None:
        lse, logp = logprob_onepass(got_z, labels, seq_ids=seq, seq_logp=got[0], seq_logit=got[1], seq_sq=got[2],
                                    log_sum_sq=got[3], interpreted=True, programs=programs, **transform)
    else:
        lse, logp = onepass_epilogue(got_z, labels, seq_ids=seq, seq_logp=got[0], seq_logit=got[1], seq_sq=got[2],
                                     log_sum_sq=got[3], **transform)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the torch twins
    want_z, want = z.clone().cpu(), [t.cpu() for t in accs()]
    kw = dict(seq_ids=seq.cpu(), seq_logp=want[0], seq_logit=want[1], seq_sq=want[2], log_sum_sq=want[3])
    w_lse, w_logp = forward_epilogue(want_z, labels.cpu(), **kw, **transform)
    grad_epilogue(want_z, labels.cpu(), w_lse, torch.ones(M), **transform)
    for a, c in zip([lse, logp, got[3]], [w_lse, w_logp, want[3]]):  # per row
        torch.testing.assert_close(a.cpu(), c, rtol=1e-5, atol=1e-5)
    # Per-sequence sums: the kernel adds its rows' values in another order than the twin's index_add (row
    # blocks, vocabulary tiles) and its exps may differ in the last bit, so their float32 results may
    # differ by a few float32 units of the terms' total magnitude (4 here, as the TRL parity tests allow
    # for sums of log-probs), which cancellation can make far larger than a unit of the sum itself.
    row_terms = [w_logp.abs(), transform_logits(z.float().cpu(), **transform).abs().sum(-1)[:M],
                 want[3].abs()]
    for a, c, terms in zip(got[:3], want[:3], row_terms):
        magnitude = torch.zeros(n_seq).index_add_(0, seq.cpu(), terms.float())
        assert ((a.cpu() - c).abs() <= 1e-5 + 4 * 2.0**-23 * magnitude).all(), (a, c, magnitude)
    # S: one rounding of the same fp32 value (the two exps may differ in the last fp32 bit).
    tol = {torch.float32: 1e-6, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(got_z[:M].cpu().float(), want_z[:M].float(), rtol=tol, atol=1e-6)
    assert torch.equal(got_z[M:], z[M:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("use_ref", [False, True])
def test_kto_one_pass_matches_float64(use_ref, dtype, device):
    B, Tk, Hk, Vk = 7, 17, 16, 500
    x, w, b, target, labels, ref_x, ref_w = kto_batch(B, Tk, Hk, Vk, device, dtype)
    kw = {"use_ref_model": use_ref, "beta": 0.5}
    fwd = {"ref_input": ref_x, "ref_weight": ref_w} if use_ref else {}
    xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    loss_fn = FusedLinearKTOLoss(**kw, workspace_budget=15 * Vk * 8, epilogue="one_pass")
    loss, _ = loss_fn(xx, ww, target, bb, labels, kl=0.1, **fwd)
    loss.backward()
    xd, wd, bd = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    want, _ = ref_fused_kto_loss(xd, wd, target, bd, labels, kl=0.1, **kw,
                                 **{k: v.double() for k, v in fwd.items()})
    want.backward()
    tol = TOL[dtype]
    assert abs(loss.item() - want.item()) <= tol * abs(want.item())
    for g, r in zip((xx.grad, ww.grad, bb.grad), (xd.grad, wd.grad, bd.grad)):
        assert rel(g, r) <= tol


@pytest.mark.parametrize("opts", [{"ld_alpha": 0.3, "compute_nll_loss": True}, {"loss_type": "aot"},
                                  {"use_weighting": True, "dw_accumulation": "ring"}])
def test_packed_one_pass_equals_padded(opts, device):
    """A packed row's kept rows are grouped into the padded layout's order: the same chunks, the same S."""
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    opts = {**opts, "epilogue": "one_pass", "workspace_budget": _ws(torch.float32)}
    padded = run_ours(opts, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    packed = run_packed(opts, x, w, b, target, x.shape, {"gap": 2, "order": [7, 0, 3, 1, 2, 6, 5, 4]},
                        ref_x=ref_x, ref_weight=ref_w)
    tol = 0.0 if device.type == "cpu" else 1e-6  # CPU: a fixed order of the per-sequence sums
    assert rel(packed[0], padded[0]) <= tol
    for a, c in zip(packed[1] + packed[2], padded[1] + padded[2]):
        assert rel(a, c) <= tol


@pytest.mark.parametrize("dw", ["fp32", "ring"])
def test_autocast_follow(dw, device):
    """fp32 master weights, bf16 GEMMs: the hidden rows are cast for the GEMMs, then scaled by g."""
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    out = {}
    for ep in ("two_pass", "one_pass"):
        xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        loss_fn = FusedLinearPreferenceLoss(autocast="follow", compute_nll_loss=True, dw_accumulation=dw,
                                            workspace_budget=_ws(torch.float32), epilogue=ep)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = loss_fn(ww, xx, target, bb, ref_x, ref_w)
        loss.backward()
        assert ww.grad.dtype == torch.float32
        out[ep] = (loss.detach(), xx.grad, ww.grad, bb.grad)
    exact = run_ref({"compute_nll_loss": True}, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    assert out["one_pass"][0].item() == out["two_pass"][0].item()
    for ep in out:  # bf16 GEMMs against float64, at the bf16 tolerance
        assert all(rel(g, r) <= TOL[torch.bfloat16] for g, r in zip(out[ep][1:], exact[2])), ep


@pytest.mark.parametrize("bad", ["one-pass", "onepass", "fused", None, True, ("one_pass",)])
def test_bad_epilogue_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="epilogue must be one of"):
        FusedLinearPreferenceLoss(epilogue=bad)
    with pytest.raises(ValueError, match="epilogue must be one of"):
        FusedLinearKTOLoss(epilogue=bad)
    loss_fn = FusedLinearPreferenceLoss(epilogue="one_pass")
    with pytest.raises(ValueError, match="epilogue must be one of"):
        loss_fn.epilogue = bad
    assert loss_fn.epilogue == "one_pass"  # the old settings stay
    loss_fn.epilogue = "two_pass"
    assert loss_fn.cfg.epilogue == "two_pass"
