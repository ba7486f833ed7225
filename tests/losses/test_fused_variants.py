"""FusedLinearPreferenceLoss with the new loss types and TRL's options against the unfused float64
reference (loss, log-probs, NLL, rewards and gradients w.r.t. input, weight and bias): aot, aot_unpaired,
orpo, cpo, sft, loss lists with weights, WPO (use_weighting, weights from the fused pass's own token
probabilities), f-divergences; over several chunks of pairs, with prompt and pad rows, shapes that are
no multiple of any block. The two-phase schedule of the batch-level losses recomputes exactly the
chunks it must; bad options are refused by name."""
import pytest
import torch
from test_fused_loss import assert_close, batch, run_ours, run_ref

import rdpo_fast.losses.fused_pass as fp
from rdpo_fast import FusedLinearPreferenceLoss

CASES = [
    ("aot", {}),
    ("aot", {"label_smoothing": 0.1, "beta": 0.5}),
    ("aot_unpaired", {}),
    ("orpo", {"use_ref_model": False, "compute_nll_loss": True}),
    ("orpo", {"use_ref_model": False, "beta": 0.5}),
    ("cpo", {"use_ref_model": False, "compute_nll_loss": True, "alpha": 0.5, "label_smoothing": 0.1}),
    ("cpo", {"use_ref_model": False, "average_log_prob": True}),
    ("sft", {}),
    ("sft", {"use_ref_model": False}),
    (["sigmoid", "bco_pair", "sft"], {"loss_weights": [0.8, 0.2, 1.0]}),  # MPO
    (["aot", "ipo", "sft"], {"loss_weights": [1.0, 0.1, 0.5], "ld_alpha": 0.5}),
    (["simpo", "orpo"], {"use_ref_model": False, "gamma": 0.3, "loss_weights": [1.0, 0.5]}),
    ("sigmoid", {"use_weighting": True}),
    (["ipo", "hinge"], {"use_weighting": True, "average_log_prob": False}),
    (["sigmoid", "ipo"], {"use_weighting": True, "loss_weights": [1.0, 0.3]}),
    ("sigmoid", {"f_divergence_type": "js_divergence"}),
    (["robust", "sigmoid_norm"], {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3,
                                  "label_smoothing": 0.1}),
    ("exo_pair", {"f_divergence_type": "forward_kl", "label_smoothing": 1e-3, "use_weighting": True}),
]
IDS = [(c if isinstance(c, str) else "+".join(c)) + f"-{i}" for i, (c, _) in enumerate(CASES)]


def _fwd(opts, ref_x, ref_w):
    return {"ref_input": ref_x, "ref_weight": ref_w} if opts.get("use_ref_model", True) else {}


def _free(loss_type):
    names = [loss_type] if isinstance(loss_type, str) else loss_type
    return set(names) <= {"simpo", "orpo", "cpo"}


@pytest.mark.parametrize("loss_type,opts", CASES, ids=IDS)
def test_matches_unfused_float64(loss_type, opts, device):
    P, T, H, V = 4, 19, 16, 600
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    opts = {"loss_type": loss_type, "workspace_budget": 20 * V * 8, **opts}  # several chunks of pairs
    fwd = _fwd(opts, ref_x, ref_w)
    assert_close(run_ours(opts, x, w, b, target, **fwd), run_ref(opts, x, w, b, target, **fwd), 1e-5,
                 beta=opts.get("beta", 0.1), reference_free=_free(loss_type))


@pytest.mark.parametrize("loss_type,opts", [CASES[0], CASES[3], CASES[9], CASES[14]],
                         ids=[IDS[0], IDS[3], IDS[9], IDS[14]])
def test_bf16_inputs(loss_type, opts, device):
    P, T, H, V = 3, 21, 32, 700
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device, dtype=torch.bfloat16)
    opts = {"loss_type": loss_type, "workspace_budget": 20 * V * 8, **opts}
    fwd = _fwd(opts, ref_x, ref_w)
    ours = run_ours(opts, x, w, b, target, **fwd)
    assert all(g.dtype == torch.bfloat16 for g in ours[2])
    assert_close(ours, run_ref(opts, x, w, b, target, **fwd), 2e-2, beta=opts.get("beta", 0.1),
                 reference_free=_free(loss_type))


@pytest.mark.parametrize("loss_type,batch_level", [("sigmoid", False), ("aot", True), (["sigmoid", "sft"], False)])
@pytest.mark.parametrize("pairs_per_chunk,chunks", [(1, 3), (10, 1)])
def test_schedule_recomputes_only_what_it_must(loss_type, batch_level, pairs_per_chunk, chunks, device, monkeypatch):
    """Per-pair losses: one logits GEMM per chunk (6NHV). Batch-level: every chunk's forward, then all but
    the last chunk (still in the workspace) again: 2k - 1 GEMMs, 8NHV at most, 6NHV for one chunk."""
    P, T, H, V = 3, 17, 8, 300
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device, prompt=2)
    target[:, 2:] = target[:, 2:].clamp_min(0)  # every row a completion: chunks of a known size
    calls = []
    real = fp.logits_into

    def spy(out, *a):
        calls.append(out.shape[0])
        return real(out, *a)

    monkeypatch.setattr(fp, "logits_into", spy)
    rows = 2 * (T - 2)  # one pair's rows; the interpreter's workspace costs 8 bytes per fp32 logit
    opts = {"loss_type": loss_type, "workspace_budget": pairs_per_chunk * rows * V * 8}
    fwd = {"ref_input": ref_x, "ref_weight": ref_w}
    ours = run_ours(opts, x, w, b, target, **fwd)
    assert len(calls) == (2 * chunks - 1 if batch_level else chunks), calls
    monkeypatch.setattr(fp, "logits_into", real)
    assert calls[0] == (rows if chunks > 1 else P * rows)
    if chunks > 1:
        assert_close(ours, run_ref(opts, x, w, b, target, **fwd), 1e-5)


def test_two_phase_chunking_changes_nothing(device):
    P, T, H, V = 5, 13, 8, 257
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    fwd = {"ref_input": ref_x, "ref_weight": ref_w}
    one = run_ours({"loss_type": "aot_unpaired"}, x, w, b, target, **fwd)
    many = run_ours({"loss_type": "aot_unpaired", "workspace_budget": 12 * V * 8}, x, w, b, target, **fwd)
    assert abs(one[0].item() - many[0].item()) <= 1e-6 * abs(one[0].item())
    for a, c in zip(one[2], many[2]):
        assert ((a - c).norm() / c.norm()).item() <= 1e-6


def test_gradient_accumulation_is_exact_for_lists_and_wpo(device):
    P, T, H, V = 8, 13, 16, 300
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    opts = {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0], "use_weighting": False}
    for extra in ({}, {"loss_type": ["sigmoid", "ipo"], "loss_weights": [1.0, 0.5], "use_weighting": True}):
        o = {**opts, **extra}
        whole_loss, _, whole = run_ours(o, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
        n_tok = int((target[:P] != -100).sum())
        xl, wl, bl = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        loss_fn = FusedLinearPreferenceLoss(**o)
        total = 0.0
        for k in range(4):
            idx = torch.cat([torch.arange(2 * k, 2 * k + 2), P + torch.arange(2 * k, 2 * k + 2)]).to(device)
            loss, _ = loss_fn(wl, xl[idx], target[idx], bl, ref_x[idx], ref_w, num_pairs=P, num_chosen_tokens=n_tok)
            loss.backward()
            total += loss.item()
        assert abs(total - whole_loss.item()) <= 1e-5 * abs(whole_loss.item())
        for g, want in zip((xl.grad, wl.grad, bl.grad), whole):
            assert ((g - want).norm() / want.norm()).item() <= 1e-5


@pytest.mark.parametrize("ctor,match", [
    ({"loss_type": "orpo"}, "reference-free: pass use_ref_model=False"),
    ({"loss_type": ["cpo", "sft"]}, "reference-free"),
    ({"loss_type": "orpo", "use_ref_model": False, "average_log_prob": True}, "lengths would count twice"),
    ({"loss_type": ["sigmoid", "simpo"], "use_ref_model": False}, "mixes reference-free"),
    ({"loss_type": "aot", "use_weighting": True}, "not defined for aot"),
    ({"loss_type": ["sigmoid", "sft"], "use_weighting": True}, "not defined for sft"),
    ({"loss_type": ["sigmoid", "hinge"], "loss_weights": [1.0]}, "one weight per loss type"),
    ({"loss_type": ["sigmoid", "nope"]}, "unknown loss_type 'nope'"),
    ({"loss_type": "bco_pair", "f_divergence_type": "forward_kl"}, "not bco_pair"),
    ({"f_alpha_divergence_coef": 0.2}, "only used by f_divergence_type='alpha_divergence'"),
    ({"f_divergence_type": "chi2"}, "unknown f_divergence_type"),
    ({"loss_type": "sft", "label_smoothing": 0.1}, "not used by loss_type='sft'"),
    ({"loss_type": "sft", "gamma": 0.1}, "gamma"),
])
def test_bad_constructor_options(ctor, match):
    with pytest.raises(ValueError, match=match):
        FusedLinearPreferenceLoss(**ctor)


def test_soft_labels_need_a_member_that_reads_them(device):
    x, w, b, target, ref_x, ref_w = batch(2, 9, 8, 100, device)
    with pytest.raises(ValueError, match="soft_labels are read by"):
        FusedLinearPreferenceLoss(loss_type=["bco_pair", "sft"])(w, x, target, b, ref_x, ref_w,
                                                                  soft_labels=torch.rand(2, device=device))
    # A list with a reader takes them (its sigmoid member becomes rdpo).
    opts = {"loss_type": ["sigmoid", "sft"]}
    fwd = {"ref_input": ref_x, "ref_weight": ref_w, "soft_labels": torch.rand(2, device=device)}
    assert_close(run_ours(opts, x, w, b, target, **fwd), run_ref(opts, x, w, b, target, **fwd), 1e-5)
