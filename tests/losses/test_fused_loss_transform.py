"""FusedLinearPreferenceLoss with a model's logit transform (logit scale, final-logit softcap, temperature)
against the float64 oracle (values and gradients, several shapes, ignored rows, fp32 and bf16); TRL's
token metrics (entropy, token accuracy); the autocast switch; Liger's public attributes; the
average_log_prob double-division guard; float64 logits in rdpo_fast.logprobs."""
import pytest
import torch
from test_fused_loss import assert_close, batch, rel, run_ours

import rdpo_fast
from rdpo_fast import FusedLinearPreferenceLoss
from rdpo_fast.oracle import ref_logprobs
from rdpo_fast.oracle.fused import ref_fused_preference_loss, ref_token_stats

# (P, T, H, V, workspace rows): V not a multiple of any block; several chunks of pairs in most cases.
SHAPES = [(3, 19, 16, 600, 20), (2, 13, 24, 257, 1000), (4, 11, 8, 1030, 12)]
TRANSFORMS = [
    {"softcap": 2.0},
    {"softcap": 5.0, "temperature": 0.7},
    {"temperature": 1.6},
    {"logit_scale": 0.0625 * 8, "softcap": 3.0},  # Cohere-style scale before a Gemma-style cap
]


def _ref(opts, x, w, b, target, **fwd):
    skip = ("workspace_budget", "dw_accumulation", "dw_ring_budget", "autocast")
    opts = {k: v for k, v in opts.items() if k not in skip}
    fwd = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in fwd.items()}
    xd, wd, bd = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    loss, aux = ref_fused_preference_loss(wd, xd, target, bd, **opts, **fwd)
    loss.backward()
    return loss, aux, (xd.grad, wd.grad, bd.grad)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])))
@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: ",".join(f"{k}={v}" for k, v in t.items()))
def test_transform_matches_float64_oracle(shape, transform, device):
    P, T, H, V, ws_rows = shape
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    # Large logits, so the cap really bites (|z| well past c) and the test cannot pass without it.
    x = x * 3
    opts = {"compute_nll_loss": True, "alpha": 0.5, "workspace_budget": ws_rows * V * 8, **transform}
    fwd = {"ref_input": ref_x * 3, "ref_weight": ref_w}
    ours = run_ours(opts, x, w, b, target, **fwd)
    assert_close(ours, _ref(opts, x, w, b, target, **fwd), 1e-5)
    # The transform changes the answer: the same loss without it is far off.
    plain = run_ours({k: v for k, v in opts.items() if k not in transform}, x, w, b, target, **fwd)
    assert abs(plain[1][0] - ours[1][0]).max() > 1e-2


@pytest.mark.parametrize("loss_type,extra", [("ipo", {}), ("simpo", {"use_ref_model": False, "gamma": 0.3}),
                                             ("sigmoid", {"ld_alpha": 0.5})])
def test_transform_with_length_and_ld_losses(loss_type, extra, device):
    x, w, b, target, ref_x, ref_w = batch(2, 17, 12, 300, device)
    opts = {"loss_type": loss_type, "softcap": 1.5, "temperature": 0.9, **extra}
    fwd = {} if loss_type == "simpo" else {"ref_input": ref_x, "ref_weight": ref_w}
    assert_close(run_ours(opts, x, w, b, target, **fwd), _ref(opts, x, w, b, target, **fwd), 1e-5,
                 reference_free=loss_type == "simpo")


@pytest.mark.parametrize("opts", [
    {"loss_type": ["sigmoid", "bco_pair"], "loss_weights": [0.8, 0.2], "use_weighting": True},
    {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
    {"loss_type": "aot"},  # batch-level: the two-phase schedule recomputes logits with the transform
    {"loss_type": "sigmoid", "f_divergence_type": "js_divergence"},
], ids=["list+wpo", "mpo", "aot", "js"])
def test_transform_with_trl_loss_options(opts, device):
    """The issue-16 options (loss lists, WPO's log sum p^2, the two-phase schedule) see the transformed
    logits too, on several chunks."""
    x, w, b, target, ref_x, ref_w = batch(3, 19, 16, 600, device)
    opts = {**opts, "softcap": 2.0, "temperature": 0.7, "workspace_budget": 20 * 600 * 8}
    fwd = {"ref_input": ref_x * 3, "ref_weight": ref_w}
    x = x * 3
    assert_close(run_ours(opts, x, w, b, target, **fwd), _ref(opts, x, w, b, target, **fwd), 1e-5)


def test_bf16_with_softcap(device):
    x, w, b, target, ref_x, ref_w = batch(2, 21, 32, 700, device, dtype=torch.bfloat16)
    opts = {"softcap": 3.0, "temperature": 0.8, "workspace_budget": 20 * 700 * 8}
    fwd = {"ref_input": ref_x, "ref_weight": ref_w}
    ours = run_ours(opts, x, w, b, target, **fwd)
    assert all(g.dtype == torch.bfloat16 for g in ours[2])
    assert_close(ours, _ref(opts, x, w, b, target, **fwd), 2e-2)


def test_precomputed_reference_uses_the_same_transform(device):
    x, w, b, target, ref_x, ref_w = batch(3, 15, 16, 400, device)
    t = {"softcap": 2.5, "temperature": 1.2}
    in_pass = run_ours(t, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    with torch.no_grad():
        sums, _ = rdpo_fast.sequence_logprobs(ref_x, ref_w, target, **t)
    pre = run_ours(t, x, w, b, target, ref_chosen_logps=sums[:3], ref_rejected_logps=sums[3:])
    assert rel(in_pass[0], pre[0]) <= 1e-6
    for a, c in zip(in_pass[2], pre[2]):
        assert rel(a, c) <= 1e-6


@pytest.mark.parametrize("transform", [{}, {"softcap": 2.0, "temperature": 0.8}])
def test_token_stats_match_oracle(transform, device):
    P, T, H, V = 3, 14, 16, 500
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    # A label that is the argmax in a few rows, so top-1 counts are neither all 0 nor trivially fixed.
    with torch.no_grad():
        z = (x @ w.t() + b).argmax(-1)
    keep = target != -100
    flip = keep & (torch.rand(target.shape, device=device) < 0.4)
    target = torch.where(flip, z, target)
    loss_fn = FusedLinearPreferenceLoss(workspace_budget=15 * V * 8, **transform)
    _, _, stats = loss_fn(w, x, target, b, ref_x, ref_w, return_token_stats=True)
    want = ref_token_stats(x.double(), w.double(), target, b.double(), **transform)
    assert rel(stats["entropy_sum"], want["entropy_sum"]) <= 1e-5
    assert stats["chosen_top1"].item() == want["chosen_top1"].item() > 0
    assert stats["num_tokens"] == int(keep.sum()) and stats["num_chosen_tokens"] == int(keep[:P].sum())


def test_autocast_follow_runs_gemms_in_autocast_dtype(device):
    dtype = torch.bfloat16
    x, w, b, target, ref_x, ref_w = batch(2, 11, 16, 300, device)
    loss_fn = FusedLinearPreferenceLoss(autocast="follow", compute_nll_loss=True)
    xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    with torch.autocast(device.type, dtype=dtype):
        loss, aux = loss_fn(ww, xx, target, bb, ref_x, ref_w)
    loss.backward()
    # Gradients come back in the parameters' own dtype (fp32 master weights) ...
    assert ww.grad.dtype == torch.float32 and xx.grad.dtype == torch.float32
    # ... and equal a run on bf16-rounded inputs (GEMMs in bf16) with dW accumulated in fp32.
    xb, wb, bb2 = (t.detach().to(dtype).requires_grad_(True) for t in (x, w, b))
    loss_b, _ = FusedLinearPreferenceLoss(compute_nll_loss=True)(wb, xb, target, bb2, ref_x.to(dtype),
                                                                 ref_w.to(dtype))
    loss_b.backward()
    assert rel(loss, loss_b) <= 1e-6
    assert rel(xx.grad, xb.grad.float()) <= 1e-2 and rel(ww.grad, wb.grad.float()) <= 1e-2
    # And stays within bf16 accuracy of the exact fp32 loss.
    exact, _, grads = run_ours({"compute_nll_loss": True}, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    assert rel(loss, exact) <= 2e-2 and rel(ww.grad, grads[1]) <= 5e-2
    # "disable" (the default) ignores the autocast: exactly the fp32 result.
    with torch.autocast(device.type, dtype=dtype):
        off, _ = FusedLinearPreferenceLoss(compute_nll_loss=True)(w, x, target, b, ref_x, ref_w)
    assert rel(off, exact) <= 1e-6


def test_liger_public_attributes():
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    kw = dict(ignore_index=-1, beta=0.3, alpha=0.5, compute_nll_loss=True, compiled=False, use_ref_model=True,
              average_log_prob=True, chunk_size=4, loss_type="robust", label_smoothing=0.1, discopop_tau=0.05)
    ours, liger = FusedLinearPreferenceLoss(**kw), LigerFusedLinearDPOLoss(**kw)
    for name in kw:
        assert getattr(ours, name) == getattr(liger, name), name
    ours.beta = 0.7
    assert ours.beta == 0.7 and ours.cfg.beta == 0.7
    with pytest.raises(ValueError, match="label_smoothing"):
        ours.loss_type = "hinge"  # hinge reads no label_smoothing: refused, settings unchanged
    assert ours.loss_type == "robust" and ours.cfg.loss_type == "robust"


@pytest.mark.parametrize("loss_type,extra", [("ipo", {}), ("sigmoid_norm", {}), ("simpo", {"use_ref_model": False})])
def test_average_log_prob_with_length_normalised_loss_is_an_error(loss_type, extra):
    with pytest.raises(ValueError, match=f"average_log_prob=True with loss_type '{loss_type}'.*divide twice"):
        FusedLinearPreferenceLoss(loss_type=loss_type, average_log_prob=True, **extra)


@pytest.mark.parametrize("bad,match", [({"softcap": 0.0}, "softcap"), ({"temperature": -1.0}, "temperature"),
                                       ({"logit_scale": 0.0}, "logit_scale"), ({"autocast": "bf16"}, "autocast")])
def test_bad_transform_options(bad, match):
    with pytest.raises(ValueError, match=match):
        FusedLinearPreferenceLoss(**bad)


def test_logprobs_accepts_float64_logits(device):
    logits = (torch.randn(3, 7, 50, device=device, dtype=torch.float64) * 4).requires_grad_(True)
    labels = torch.randint(0, 50, (3, 7), device=device)
    labels[0, :2] = -100
    out = rdpo_fast.logprobs(logits, labels, softcap=3.0, temperature=0.9)
    assert out.dtype == torch.float32
    want = ref_logprobs(logits, labels, softcap=3.0, temperature=0.9)
    assert rel(out, want) <= 1e-6
    g = torch.randn_like(want)
    out.backward(g.float())
    (gw,) = torch.autograd.grad(want, logits, g)
    assert logits.grad.dtype == torch.float64 and rel(logits.grad, gw) <= 1e-5


class _ScalarPasses(torch.overrides.TorchFunctionMode):
    """Records every multiply or divide of a [rows, V] block by a Python number (a pass over the logits)."""

    def __init__(self, V):
        super().__init__()
        self.V, self.seen = V, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name.strip("_").rstrip("_") in ("mul", "div", "truediv", "rmul", "rtruediv", "imul", "itruediv"):
            t, other = (args + (None, None))[:2]
            if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[1] == self.V \
                    and isinstance(other, (int, float)):
                self.seen.append((name, other))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("temperature,logit_scale", [(1.0, 1.0), (2.0, 1.0), (0.5, 0.5)])
def test_no_temperature_pass_when_t_is_one(temperature, logit_scale, monkeypatch, device):
    """The torch twin scales the logits by 1/T only when T != 1 (a logit scale folds into T: T/s)."""
    if device.type != "cpu":
        pytest.skip("counts the torch twin's passes")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # rdpo_fast.ops.backend: the torch twins
    V = 300
    x, w, b, target, ref_x, ref_w = batch(2, 11, 8, V, device)
    xx, ww = (t.detach().clone().requires_grad_(True) for t in (x, w))
    loss_fn = FusedLinearPreferenceLoss(temperature=temperature, logit_scale=logit_scale)
    with _ScalarPasses(V) as mode:
        loss, _ = loss_fn(ww, xx, target, b, ref_x, ref_w)
    loss.backward()
    unit = temperature / logit_scale == 1.0
    assert (mode.seen == []) == unit, mode.seen
