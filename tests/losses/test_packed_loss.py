"""The fused losses on packed (padding-free) input: one row [1, N, H] with segment_ids naming each token's
sequence (chosen 0..B-1, rejected B..2B-1). Against the float64 oracle on the padded layout (fp32 1e-5,
bf16 2e-2; gradients compared on the packed rows), and against our own padded call (the kept rows are
grouped into the same order, so on CPU the results are bitwise equal). Rows: prompt tokens, padding
between sequences with id -1, sequences out of order and interleaved, several chunks, shapes that are
no multiple of any block size. Bad segment ids are refused with messages that name them."""
import pytest
import torch
from test_fused_loss import assert_close, batch, run_ref
from test_kto_fused import kto_batch

import rdpo_fast
from rdpo_fast import FusedLinearKTOLoss, FusedLinearPreferenceLoss

IGNORE = -100


def pack(x, target, *others, order=None, gap=0, interleave=False):
    """One packed row from a padded batch: each sequence's tokens up to its last completion token, the
    sequences in `order`, `gap` padding tokens (target ignored, segment id -1, random hidden) after each;
    interleave=True alternates the tokens of consecutive sequence pairs instead (still in order within
    each sequence). Returns (x_row [1, N, H], target_row [1, N], segment_ids [1, N], flat index of each
    packed token in the padded grid (-1 for padding), the others packed like x). host_counts(target) gives
    the loss's host_counts for it."""
    n, T = target.shape
    keep = target != IGNORE
    last = torch.where(keep, torch.arange(T, device=target.device), -1).max(1).values
    order = list(range(n)) if order is None else order
    runs = [[s * T + t for t in range(int(last[s]) + 1)] for s in order]
    if interleave:
        mixed = []
        for a, b in zip(runs[0::2], runs[1::2]):
            for i in range(max(len(a), len(b))):
                mixed += a[i:i + 1] + b[i:i + 1]
        runs = [mixed] + ([runs[-1]] if len(runs) % 2 else [])
    index = []
    for run in runs:
        index += run + [-1] * gap
    index = torch.tensor(index, device=target.device)
    real = index >= 0
    safe = index.clamp_min(0)
    H = x.shape[-1]

    def rows(t):
        flat = t.reshape(-1, H).index_select(0, safe)
        return torch.where(real[:, None], flat, torch.randn_like(flat)).unsqueeze(0)

    tgt = torch.where(real, target.reshape(-1).index_select(0, safe), IGNORE).unsqueeze(0)
    seg = torch.where(real, torch.div(safe, T, rounding_mode="floor"), -1).unsqueeze(0)
    return (rows(x), tgt, seg, index, *[rows(t) for t in others])


def host_counts(target):
    """Each padded row's completion tokens: the packed row's host_counts (sequence s is row s)."""
    return [int(c) for c in (target != IGNORE).sum(1)]


def unpack_grad(g_row, index, shape):
    """A packed row's input gradient placed back in the padded grid (padding rows must have none)."""
    H = shape[-1]
    g = g_row.reshape(-1, H)
    real = index >= 0
    assert not bool(g[~real].any()), "a padding row of the packed input got a gradient"
    return torch.zeros(shape[0] * shape[1], H, dtype=g.dtype, device=g.device).index_copy(
        0, index[real], g[real]).view(shape)


def run_packed(opts, x, w, b, target, index_shape, pack_kw=None, ref_x=None, **fwd):
    """Our loss on the packed row of (x, target): (loss, aux, (dX in the padded grid, dW, d bias))."""
    packed = pack(x, target, *([] if ref_x is None else [ref_x]), **(pack_kw or {}))
    xp, tp, seg, index = packed[:4]
    if ref_x is not None:
        fwd["ref_input"] = packed[4]
    xp, w, b = (t.detach().clone().requires_grad_(True) for t in (xp, w, b))
    loss, aux = FusedLinearPreferenceLoss(**opts)(w, xp, tp, b, segment_ids=seg, host_counts=host_counts(target),
                                                  **fwd)
    loss.backward()
    return loss, aux, (unpack_grad(xp.grad, index, index_shape), w.grad, b.grad)


CASES = [
    ("sigmoid", {}),
    ("rdpo", {}),
    ("ipo", {}),
    ("simpo", {"use_ref_model": False, "gamma": 0.4, "beta": 2.0}),
    ("aot", {}),
    ("sigmoid", {"compute_nll_loss": True, "alpha": 0.7, "ld_alpha": 0.4}),
    ("sigmoid", {"average_log_prob": True, "beta": 1.0}),
    ("sigmoid", {"use_weighting": True}),
    (["sigmoid", "bco_pair", "sft"], {"loss_weights": [0.8, 0.2, 1.0]}),
    ("sigmoid", {"softcap": 3.0, "temperature": 0.7}),
]
PACKINGS = [{}, {"gap": 3, "order": [4, 1, 0, 5, 3, 2]}, {"interleave": True, "gap": 1}]


@pytest.mark.parametrize("pack_kw", PACKINGS, ids=["in-order", "shuffled-gaps", "interleaved"])
@pytest.mark.parametrize("loss_type,opts", CASES, ids=[f"{i}-{c[0] if isinstance(c[0], str) else 'mpo'}"
                                                       for i, c in enumerate(CASES)])
def test_packed_matches_float64_oracle(loss_type, opts, pack_kw, device):
    P, T, H, V = 3, 19, 16, 600
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    opts = {"loss_type": loss_type, "workspace_budget": 20 * V * 8, **opts}  # several chunks of pairs
    fwd = {}
    if loss_type == "rdpo":
        fwd["soft_labels"] = torch.rand(P, device=device)
    ref_kw = {}
    if opts.get("use_ref_model", True):
        fwd["ref_weight"] = ref_w
        ref_kw = {"ref_x": ref_x}
    ours = run_packed(opts, x, w, b, target, x.shape, pack_kw, **ref_kw, **fwd)
    ref = run_ref(opts, x, w, b, target, **fwd, **({"ref_input": ref_x} if ref_kw else {}))
    assert_close(ours, ref, 1e-5, beta=opts.get("beta", 0.1), reference_free=loss_type == "simpo")


def test_packed_bf16_and_precomputed_reference(device):
    P, T, H, V = 2, 21, 32, 700
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device, dtype=torch.bfloat16)
    with torch.no_grad():
        sums, _ = rdpo_fast.sequence_logprobs(ref_x, ref_w, target)
    fwd = {"ref_chosen_logps": sums[:P], "ref_rejected_logps": sums[P:]}
    opts = {"compute_nll_loss": True, "workspace_budget": 20 * V * 8}
    ours = run_packed(opts, x, w, b, target, x.shape, {"gap": 2}, **fwd)
    assert all(g.dtype == torch.bfloat16 for g in ours[2])
    assert_close(ours, run_ref(opts, x, w, b, target, **fwd), 2e-2)


@pytest.mark.parametrize("opts", [{"ld_alpha": 0.3, "compute_nll_loss": True}, {"loss_type": "aot"},
                                  {"use_weighting": True, "workspace_budget": 8000}, {"dw_accumulation": "ring"}])
def test_packed_equals_padded_call(opts, device):
    """The same kept rows in the same order make the same chunks: bitwise equal on CPU (where the
    per-sequence sums add in a fixed order), within float32 rounding of the atomics on CUDA."""
    P, T, H, V = 4, 23, 24, 333
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    fwd = {"ref_weight": ref_w}
    padded = run_packed_padded(opts, x, w, b, target, ref_input=ref_x, **fwd)
    packed = run_packed(opts, x, w, b, target, x.shape, {"gap": 2, "order": [7, 0, 3, 1, 2, 6, 5, 4]},
                        ref_x=ref_x, **fwd)
    flat_a = [padded[0], *padded[1], *padded[2]]
    flat_b = [packed[0], *packed[1], *packed[2]]
    for a, c in zip(flat_a, flat_b):
        if device.type == "cpu":
            assert torch.equal(a, c)
        else:
            assert torch.allclose(a, c, rtol=1e-6, atol=1e-6)


def run_packed_padded(opts, x, w, b, target, **fwd):
    x, w, b = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    loss, aux = FusedLinearPreferenceLoss(**opts)(w, x, target, b, **fwd)
    loss.backward()
    return loss, aux, (x.grad, w.grad, b.grad)


def test_packed_host_counts_and_token_stats(device):
    P, T, H, V = 3, 17, 16, 400
    x, w, b, target, _, _ = batch(P, T, H, V, device)
    xp, tp, seg, _ = pack(x, target, gap=1)
    counts = host_counts(target)
    loss_fn = FusedLinearPreferenceLoss(use_ref_model=False, loss_type="simpo")
    got = loss_fn(w, xp, tp, b, segment_ids=seg, return_token_stats=True, host_counts=counts)
    padded = loss_fn(w, x, target, b, return_token_stats=True)
    assert torch.allclose(got[0], padded[0], rtol=1e-6)
    assert got[2]["num_tokens"] == padded[2]["num_tokens"] == sum(counts)
    assert torch.allclose(got[2]["entropy_sum"], padded[2]["entropy_sum"], rtol=1e-6)
    assert torch.equal(got[2]["chosen_top1"], padded[2]["chosen_top1"])
    # [N, H] / [N] without the leading 1 works too.
    flat = loss_fn(w, xp[0], tp[0], b, segment_ids=seg[0], host_counts=counts)
    assert torch.allclose(flat[0], got[0], rtol=1e-6)
    # host_counts' length says how many sequences there are; a count that disagrees is named.
    with pytest.raises(ValueError, match="host_counts names 7 packed sequences"):
        loss_fn(w, xp, tp, b, segment_ids=seg, host_counts=counts + [1])
    with pytest.raises(ValueError, match=r"host_counts\[6\] = 1 but sequence 6 of target has 0"):
        loss_fn(w, xp, tp, b, segment_ids=seg, host_counts=counts + [1, 1])
    with pytest.raises(ValueError, match=r"host_counts\[1\] = .* but sequence 1 of target has"):
        loss_fn(w, xp, tp, b, segment_ids=seg, host_counts=[counts[0], counts[1] + 1, *counts[2:]])


def test_packed_row_needs_host_counts():
    """The ids cannot say how many sequences a row holds: with the last two sequences (the second pair's
    rejected, of B = 3) scoring no token, the largest id of a completion token + 1 is 4, an even number,
    and would pair chosen 2 with chosen 0's rejected... The row is refused without host_counts, and with
    them the empty sequences are named, as the padded layout names them."""
    P, T, H, V = 3, 13, 8, 90
    x, w, b, target, _, _ = batch(P, T, H, V, torch.device("cpu"))
    target[4:] = IGNORE
    xp, tp, seg, _ = pack(x, target)
    loss_fn = FusedLinearPreferenceLoss(use_ref_model=False, loss_type="simpo")
    with pytest.raises(ValueError, match="segment_ids .* needs host_counts"):
        loss_fn(w, xp, tp, b, segment_ids=seg)
    with pytest.raises(ValueError, match="sequence 4 of the batch has no completion token"):
        loss_fn(w, xp, tp, b, segment_ids=seg, host_counts=host_counts(target))
    with pytest.raises(ValueError, match="sequence 4 of the batch has no completion token"):
        loss_fn(w, x, target, b)


def test_bad_segment_ids_are_refused_by_name():
    P, T, H, V = 2, 11, 8, 100
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, torch.device("cpu"))
    xp, tp, seg, _, rxp = pack(x, target, ref_x, gap=1)
    loss_fn = FusedLinearPreferenceLoss()
    kw = dict(ref_chosen_logps=torch.zeros(P), ref_rejected_logps=torch.zeros(P), host_counts=host_counts(target))
    kept = tp != IGNORE

    def refused(match, **over):
        args = dict(lin_weight=w, _input=xp, target=tp, bias=b, segment_ids=seg, **kw)
        args.update(over)
        with pytest.raises((ValueError, TypeError), match=match):
            loss_fn(**args)

    refused(r"must lie in \[0, 4\).*got -2", segment_ids=seg.masked_fill(kept & (seg == 1), -2))
    refused(r"must lie in \[0, 4\).*got 4", segment_ids=seg.masked_fill(kept & (seg == 3), 4))
    refused("host_counts names 3 packed sequences.*even", host_counts=host_counts(target)[:3])
    # Sequence 1's tokens relabelled as sequence 0's: the counts disagree from sequence 0 on.
    refused(r"host_counts\[0\] = \d+ but sequence 0 of target has \d+",
            segment_ids=seg.masked_fill(kept & (seg == 1), 0))
    refused("needs host_counts", host_counts=None)
    refused("integer tensor", segment_ids=seg.float())
    n = tp.numel()  # the packed row's length follows the batch's random lengths
    refused(f"segment_ids has {n - 1} entries but target has {n}", segment_ids=seg[:, :-1])
    refused(rf"segment_ids has shape \({n}, 1\) but target has \(1, {n}\)", segment_ids=seg.view(-1, 1))
    refused(r"one packed row \[1, N, H\]", _input=xp.expand(2, -1, -1))
    refused("target must have _input's leading shape", target=tp[:, :-1])
    refused("ref_input must be one packed row", ref_input=x, ref_weight=ref_w, ref_chosen_logps=None,
            ref_rejected_logps=None)
    refused("target must have ref_input's leading shape", ref_input=rxp[:, :-1], ref_weight=ref_w,
            ref_chosen_logps=None, ref_rejected_logps=None)
    # Only completion tokens' ids are read: padding and prompt tokens may carry any id.
    loss, _ = loss_fn(w, xp, tp, b, segment_ids=seg.masked_fill(~kept, 99), **kw)
    want, _ = loss_fn(w, xp, tp, b, segment_ids=seg, **kw)
    assert torch.equal(loss, want)


@pytest.mark.parametrize("use_ref,avg", [(False, False), (True, True)])
def test_kto_packed_equals_padded(use_ref, avg, device):
    B, T, H, V = 5, 15, 16, 300
    x, w, b, target, labels, ref_x, ref_w = kto_batch(B, T, H, V, device)
    kto = FusedLinearKTOLoss(use_ref_model=use_ref, average_log_prob=avg, workspace_budget=12 * V * 8)
    xp, tp, seg, index, rxp = pack(x, target, ref_x, gap=2, order=[3, 0, 4, 1, 2])
    results = []
    for inp, tgt, ref, extra in ((x, target, ref_x, {}), (xp, tp, rxp, {"segment_ids": seg})):
        inp, ww = inp.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
        fwd = {"ref_input": ref, "ref_weight": ref_w} if use_ref else {}
        loss, aux = kto(inp, ww, tgt, b, labels, kl=0.2, **fwd, **extra)
        loss.backward()
        g = inp.grad if not extra else unpack_grad(inp.grad, index, x.shape)
        results.append([loss.detach(), *aux, g, ww.grad])
    for a, c in zip(*results):
        assert torch.equal(a, c) if device.type == "cpu" else torch.allclose(a, c, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\).*got -1"):
        kto(xp, w, tp, b, labels, segment_ids=seg.masked_fill((tp != IGNORE) & (seg == 2), -1))
    # The number of sequences is preference_labels': a trailing sequence scoring nothing is named, not dropped.
    empty_last = tp.masked_fill(seg == 2, IGNORE)
    with pytest.raises(ValueError, match="sequence 2 of the batch has no completion token"):
        kto(xp, w, empty_last, b, labels, segment_ids=seg)
    with pytest.raises(ValueError, match=r"preference_labels must be a bool tensor of shape \[B\]"):
        kto(xp, w, tp, b, labels[0], segment_ids=seg)
