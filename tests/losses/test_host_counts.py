"""FusedLinearPreferenceLoss(host_counts=...) (issue 13, item 2): with the collator's host-side token
counts the call makes no host sync before its kernels are queued (no .tolist(), .item(), nonzero or
Python branch on a tensor), inside the chunk loop or before it; results are bitwise identical with
and without them; wrong counts are refused (exactly on CPU, on the device where syncs cost a wait)."""
import pytest
import torch
from test_fused_loss import batch

import rdpo_fast.losses.fused as fl
from rdpo_fast import FusedLinearPreferenceLoss

P, T, H, V = 4, 17, 12, 301
# Tensor methods and torch functions that read device data back to the host.
SYNCS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy", "cpu",
         "unique", "masked_select", "nonzero_static", "argwhere", "_local_scalar_dense"}


class _RecordSyncs(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in SYNCS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


CASES = [
    ("sigmoid", {}, {"ref": "in_pass"}),
    ("rdpo", {"ld_alpha": 0.5, "compute_nll_loss": True}, {"ref": "given", "soft": True}),
    ("aot", {"dw_accumulation": "ring"}, {"ref": "in_pass"}),  # batch-level: the two-phase schedule
    (["simpo", "orpo"], {"use_ref_model": False, "gamma": 0.3, "loss_weights": [1.0, 0.5]}, {}),
]


def _fwd(how, ref_x, ref_w):
    fwd = {}
    if how.get("ref") == "in_pass":
        fwd.update(ref_input=ref_x, ref_weight=ref_w)
    elif how.get("ref") == "given":
        fwd.update(ref_chosen_logps=-torch.rand(P) * 20, ref_rejected_logps=-torch.rand(P) * 20)
    if how.get("soft"):
        fwd["soft_labels"] = torch.linspace(0.2, 0.9, P)
    return fwd


def _call(loss_type, opts, fwd, data, host_counts):
    x, w, b, target, ref_x, ref_w = data
    xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    loss_fn = FusedLinearPreferenceLoss(loss_type=loss_type, workspace_budget=20 * V * 8, **opts)
    with _RecordSyncs() as rec:
        loss, aux = loss_fn(ww, xx, target, bb, host_counts=host_counts, **fwd)
    loss.backward()
    return (loss, aux, (xx.grad, ww.grad, bb.grad)), rec.seen


@pytest.mark.parametrize("async_checks", [False, True], ids=["cpu-exact", "device-checks"])
@pytest.mark.parametrize("loss_type,opts,how", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_host_counts_change_nothing_and_skip_every_sync(loss_type, opts, how, async_checks, monkeypatch, device):
    if async_checks:
        # What a CUDA device does: no read-back, checks queued on the device.
        monkeypatch.setattr(fl, "_syncs_free", lambda dev: False)
    data = batch(P, T, H, V, device)
    target = data[3]
    counts = (target != -100).sum(1).tolist()
    fwd = _fwd(how, data[4], data[5])
    want, syncs_without = _call(loss_type, opts, fwd, data, None)
    got, syncs_with = _call(loss_type, opts, fwd, data, counts)
    assert syncs_without.count("tolist") == 1, syncs_without  # the one read-back the counts replace
    if async_checks:
        assert syncs_with == [], syncs_with
    assert torch.equal(got[0], want[0])
    for a, c in zip(got[1], want[1]):
        assert torch.equal(a, c)
    for a, c in zip(got[2], want[2]):
        assert torch.equal(a, c)


def test_wrong_host_counts_are_refused(monkeypatch, device):
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    counts = (target != -100).sum(1).tolist()
    loss_fn = FusedLinearPreferenceLoss()
    wrong = list(counts)
    wrong[3] += 1
    with pytest.raises(ValueError, match=r"host_counts\[3\]"):
        loss_fn(w, x, target, b, ref_x, ref_w, host_counts=wrong)
    for bad in (counts[:-1], tuple(float(c) for c in counts), torch.tensor(counts), [True] * (2 * P)):
        with pytest.raises(ValueError, match="host_counts"):
            loss_fn(w, x, target, b, ref_x, ref_w, host_counts=bad)
    empty = target.clone()
    empty[1] = -100
    zero = list(counts)
    zero[1] = 0
    with pytest.raises(ValueError, match="no completion token"):
        loss_fn(w, x, empty, b, ref_x, ref_w, host_counts=zero)
    # Checked on the device when syncs are not free: torch._assert_async fails (at once on CPU).
    monkeypatch.setattr(fl, "_syncs_free", lambda dev: False)
    with pytest.raises(RuntimeError, match="host_counts"):
        loss_fn(w, x, target, b, ref_x, ref_w, host_counts=wrong)
    bad_target = target.clone()
    bad_target[0, -1] = V  # out of range, and the count of row 0 no longer matches either way
    fixed = (bad_target != -100).sum(1).tolist()
    with pytest.raises(RuntimeError, match="outside"):
        loss_fn(w, x, bad_target, b, ref_x, ref_w, host_counts=fixed)


# ------------------------------------------------------------------------- backward without a host sync
class _RecordHostReads:
    """Records every Tensor method that reads device data back to the host. Patched on the class, not a
    TorchFunctionMode: the autograd engine runs a Function's backward outside the caller's modes."""

    def __init__(self, monkeypatch):
        self.seen = []
        for name in sorted(SYNCS):
            real = getattr(torch.Tensor, name, None)
            if real is not None:
                monkeypatch.setattr(torch.Tensor, name, self._spy(name, real))

    def _spy(self, name, real):
        def spy(t, *a, **k):
            self.seen.append(name)
            return real(t, *a, **k)
        return spy


def _backward(data, host_counts, grad_output, opts, monkeypatch):
    """Gradients of one call after loss.backward(grad_output), and the host reads backward made."""
    x, w, b, target, ref_x, ref_w = data
    xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    loss_fn = FusedLinearPreferenceLoss(workspace_budget=20 * V * 8, **opts)
    loss, _ = loss_fn(ww, xx, target, bb, ref_x, ref_w, host_counts=host_counts)
    grad_output = torch.tensor(grad_output, device=loss.device)
    with monkeypatch.context() as m:
        rec = _RecordHostReads(m)
        loss.backward(grad_output)
    return (xx.grad, ww.grad, bb.grad), rec.seen


@pytest.mark.parametrize("twin", [False, True], ids=["kernel", "torch-twin"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("opts", [{}, {"dw_accumulation": "weight"}], ids=["dw-fp32", "dw-weight"])
def test_sync_free_backward_scales_exactly_without_a_sync(opts, dtype, twin, monkeypatch, device):
    """A host_counts call on a device where syncs cost makes none in backward either: the gradients made in
    forward are scaled in place on the device (kernels/grad_scale.py, or its torch twin), and the bits are
    the default path's for upstream gradients 1, 2.5 and 0."""
    if twin:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # rdpo_fast.ops.backend: the torch twins
    data = batch(P, T, H, V, device, dtype=dtype)
    counts = (data[3] != -100).sum(1).tolist()
    for grad_output in (1.0, 2.5, 0.0):
        want, syncs_default = _backward(data, None, grad_output, opts, monkeypatch)
        # The recorder sees inside backward: the default path reads the upstream gradient once.
        assert syncs_default == ["__bool__"], syncs_default
        with monkeypatch.context() as m:
            m.setattr(fl, "_syncs_free", lambda dev: False)
            got, syncs = _backward(data, counts, grad_output, opts, monkeypatch)
        assert syncs == [], syncs
        for a, c in zip(got, want):
            assert a.dtype == dtype and torch.equal(a, c)


def test_second_backward_of_a_sync_free_call_is_refused(monkeypatch, device):
    """In-place scaling cannot be undone: a second backward through the same sync-free call (retain_graph)
    raises and says why, before touching any gradient; the default path keeps allowing it, exactly."""
    x, w, b, target, ref_x, ref_w = batch(P, T, H, V, device)
    counts = (target != -100).sum(1).tolist()
    loss_fn = FusedLinearPreferenceLoss()
    xx = x.detach().clone().requires_grad_(True)
    loss, _ = loss_fn(w, xx, target, b, ref_x, ref_w)
    loss.backward(retain_graph=True)
    first = xx.grad.clone()
    loss.backward()
    assert torch.equal(xx.grad, 2 * first)

    monkeypatch.setattr(fl, "_syncs_free", lambda dev: False)
    xx = x.detach().clone().requires_grad_(True)
    loss, _ = loss_fn(w, xx, target, b, ref_x, ref_w, host_counts=counts)
    (2.5 * loss).backward(retain_graph=True)
    first = xx.grad.clone()
    with pytest.raises(RuntimeError, match="second backward.*host_counts.*in place"):
        loss.backward()
    assert torch.equal(xx.grad, first)
