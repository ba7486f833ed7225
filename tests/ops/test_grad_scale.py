"""rdpo_fast.ops.scale.scale_ (kernels/grad_scale.py and its torch twin): t *= s in place with s read on
the device, bit for bit what `t * s.to(t.dtype)` gives, and no write at all when s is exactly 1."""
import pytest
import torch

from rdpo_fast.ops.backend import backend
from rdpo_fast.ops.scale import scale_

SCALES = [1.0, 2.5, 0.0, -0.0, 1 / 3, -7.123456, 1e-3, 1.0000001, 3e38, 1e-40, float("nan"), float("inf")]
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # 3e38 x 100 is inf, as in torch
@pytest.mark.parametrize("twin", [False, True], ids=["kernel", "torch-twin"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_scale_is_torchs_product_bit_for_bit(dtype, twin, monkeypatch, device):
    if twin:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # rdpo_fast.ops.backend: the torch twins
    info = torch.finfo(dtype)
    # More elements than one block of the interpreter's grid, so the programs' strided loop runs twice.
    x = (torch.randn(140_001, device=device) * 100).to(dtype)
    x[:7] = torch.tensor([-0.0, float("inf"), float("nan"), info.max, info.tiny, -info.tiny / 8, 1e-39])
    for s in SCALES:
        s = torch.tensor(s, device=device)
        want = x * s.to(dtype)
        got = x.clone()
        assert scale_(got, s) is got
        nan = want.isnan()
        assert torch.equal(got.isnan(), nan), s
        assert torch.equal(got.view(INT_VIEW[dtype])[~nan], want.view(INT_VIEW[dtype])[~nan]), s


def test_unit_scale_writes_nothing(device):
    if backend(torch.empty(1, device=device)) == "torch":
        pytest.skip("the torch twin multiplies; only the kernel returns early")
    # A bf16 NaN whose payload the kernel's store would canonicalise (0x7FFF -> 0x7FC0): unchanged bits
    # show it was not written.
    x = torch.full((5000,), 0x7FFF, dtype=torch.int16, device=device).view(torch.bfloat16)
    scale_(x, torch.tensor(1.0, device=device))
    assert (x.view(torch.int16) == 0x7FFF).all()
    scale_(x, torch.tensor(2.0, device=device))
    assert (x.view(torch.int16) == 0x7FC0).all()  # the control: any other scale writes
