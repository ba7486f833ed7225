"""Test setup: without CUDA the Triton kernels run under the interpreter, which must be switched on
before triton is first imported (SPEC section 7)."""
import os
import sys

import torch

# Tests import bench.* helpers: the repository root goes at the END of sys.path, behind site-packages, so
# nothing in the checkout can take an installed package's name (SPEC section 2; pytest.ini).
# The test helpers (tests/support/) are imported by name, from the same place at the end of the path.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (_ROOT, os.path.join(_ROOT, "tests", "support")):
    if _p not in sys.path:
        sys.path.append(_p)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random inputs per test, yet reproducible from the test's own name when it fails.
    import zlib

    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
