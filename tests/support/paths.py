"""Where the tests' files are, for tests in any subfolder of tests/ and the torchrun workers here."""
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"
