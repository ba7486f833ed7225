"""dw_accumulation="ring" (issue 12): the chunks' dZ and hidden rows kept in a ring, one dW GEMM per
flush. Against the unfused float64 reference at the tolerances of the other fused-loss tests, with the
flush count pinned (several flushes, and exactly one, which writes dW in the weight's dtype), for
per-pair and batch-level (two-phase) losses, prompt/pad rows, shapes that are no multiple of any block;
the ring stays inside its byte budget; bad options are refused by name."""
import pytest
import torch
from test_fused_loss import assert_close, batch, rel, run_ours, run_ref

import rdpo_fast.losses.fused_pass as fp
from rdpo_fast import FusedLinearPreferenceLoss

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
P, T, H, V = 8, 29, 20, 601  # H, V: no multiple of any block
CHUNK = 24  # rows of logits per chunk: a few pairs each


def _ws(dtype):
    """A workspace budget of CHUNK rows (the interpreter holds a copy: twice the element size)."""
    return CHUNK * V * 2 * torch.empty((), dtype=dtype).element_size()


@pytest.fixture
def rings(monkeypatch):
    """Every DwRing built during the test, to read its plan."""
    made = []
    real = fp.DwRing.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(fp.DwRing, "__init__", spy)
    return made


def _row_bytes(dtype):
    return (V + H) * torch.empty((), dtype=dtype).element_size()


def _budgets(dtype):
    """dw_ring_budget values: 'several' holds two chunks beside the fp32 accumulator, 'single' every
    row of the batch."""
    return {"several": 4 * V * H + 2 * CHUNK * _row_bytes(dtype), "single": 2 * P * T * _row_bytes(dtype)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("flushes", ["several", "single"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "aot"])
def test_ring_matches_float64(dtype, flushes, loss_type, rings, device):
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device, dtype=dtype)
    opts = {"loss_type": loss_type, "compute_nll_loss": True, "dw_accumulation": "ring",
            "workspace_budget": _ws(dtype), "dw_ring_budget": _budgets(dtype)[flushes]}
    fwd = {"ref_input": ref_x, "ref_weight": ref_w}
    ours = run_ours(opts, x, w, b, target, **fwd)
    (ring,) = rings
    chunks = len(ring.offsets)
    assert chunks >= 3, chunks  # several chunks of pairs, or the test would not exercise the ring
    if flushes == "single":
        assert ring.flushes == 1 and ring.w_dtype == dtype  # dW straight in the weight's dtype
    else:
        assert 1 < ring.flushes < chunks and ring.w_dtype == torch.float32, (ring.flushes, chunks)
    assert all(g.dtype == dtype for g in ours[2])
    assert_close(ours, run_ref(opts, x, w, b, target, **fwd), TOL[dtype])


@pytest.mark.parametrize("loss_type", ["sigmoid", "aot_unpaired", ["sigmoid", "sft"]])
def test_ring_equals_fp32_schedule(loss_type, device):
    """Same chunks, same dZ: the ring changes only how the per-chunk dW products are summed."""
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    fwd = {"ref_input": ref_x, "ref_weight": ref_w}
    base = {"loss_type": loss_type, "workspace_budget": _ws(torch.float32)}
    want = run_ours(base, x, w, b, target, **fwd)
    for budget in _budgets(torch.float32).values():
        got = run_ours({**base, "dw_accumulation": "ring", "dw_ring_budget": budget}, x, w, b, target, **fwd)
        assert got[0].item() == want[0].item()
        for a, c in zip(got[1], want[1]):
            assert torch.equal(a, c)
        assert torch.equal(got[2][0], want[2][0]) and torch.equal(got[2][2], want[2][2])  # dX, d bias
        assert rel(got[2][1], want[2][1]) <= 1e-6  # dW: the same products, summed in another order


@pytest.mark.parametrize("twin", [False, True], ids=["interpreter", "torch-twin"])
@pytest.mark.parametrize("budget", [None, 1, "several", "single"])
def test_ring_stays_within_its_budget(budget, twin, rings, device, monkeypatch):
    if twin:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # rdpo_fast.ops.backend: the torch twins
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    ws = _ws(torch.float32)
    opts = {"dw_accumulation": "ring", "workspace_budget": ws}
    if budget is not None:
        opts["dw_ring_budget"] = _budgets(torch.float32).get(budget, budget)
    ours = run_ours(opts, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    (ring,) = rings
    held = (ring.z.numel() + ring.x.numel()) * 4 + (4 * V * H if ring.flushes > 1 else 0)
    limit = ws + 4 * V * H if budget is None else opts["dw_ring_budget"]
    # Within the budget, or (a budget smaller than one chunk) one slot of the largest chunk.
    assert held <= limit or ring.rows == max(ring.sizes), (held, limit, ring.rows, ring.sizes)
    if budget == 1:
        assert ring.rows == max(ring.sizes) and ring.flushes > 1
    if twin:
        assert_close(ours, run_ref(opts, x, w, b, target, ref_input=ref_x, ref_weight=ref_w), 1e-5)


def test_ring_under_autocast_follow(rings, device):
    """fp32 master weights, bf16 GEMMs: one flush hands back dW in fp32 straight from the GEMM."""
    dtype = torch.bfloat16
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    for mode in ("fp32", "ring"):
        xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        extra = {"dw_ring_budget": 10**9} if mode == "ring" else {}
        loss_fn = FusedLinearPreferenceLoss(autocast="follow", compute_nll_loss=True, dw_accumulation=mode,
                                            workspace_budget=_ws(torch.float32), **extra)
        with torch.autocast(device.type, dtype=dtype):
            loss, _ = loss_fn(ww, xx, target, bb, ref_x, ref_w)
        loss.backward()
        assert ww.grad.dtype == torch.float32
        if mode == "fp32":
            want = (loss.detach(), ww.grad)
    (ring,) = rings
    assert ring.flushes == 1 and ring.w_dtype == torch.float32 and ring.z.dtype == dtype
    assert rel(loss, want[0]) <= 1e-6
    assert rel(ww.grad, want[1]) <= 1e-2  # bf16 products, summed in another order
    exact = run_ref({"compute_nll_loss": True}, x, w, b, target, ref_input=ref_x, ref_weight=ref_w)
    assert rel(ww.grad, exact[2][1]) <= 5e-2


def test_ring_without_weight_grad_uses_the_plain_workspace(rings, device):
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    xx = x.detach().clone().requires_grad_(True)
    loss, _ = FusedLinearPreferenceLoss(dw_accumulation="ring")(w, xx, target, b, ref_x, ref_w)
    loss.backward()
    assert rings == [] and xx.grad is not None


@pytest.mark.parametrize("ctor,match", [
    ({"dw_accumulation": "rings"}, "dw_accumulation"),
    ({"dw_ring_budget": 2**20}, "dw_ring_budget"),  # without dw_accumulation="ring": would be ignored
    ({"dw_accumulation": "ring", "dw_ring_budget": 0}, "dw_ring_budget"),
    ({"dw_accumulation": "ring", "dw_ring_budget": -5}, "dw_ring_budget"),
    ({"dw_accumulation": "ring", "dw_ring_budget": 1.5e9}, "dw_ring_budget"),
    ({"dw_accumulation": "ring", "dw_ring_budget": True}, "dw_ring_budget"),
])
def test_bad_ring_options(ctor, match):
    with pytest.raises(ValueError, match=match):
        FusedLinearPreferenceLoss(**ctor)
