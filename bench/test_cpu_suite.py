"""CPU benchmark suite (pytest-benchmark): our ops against torch naive, Liger and CCE + the DPO head,
time per forward+backward and, in the same row, peak memory from a fresh process (bench/cpu_memory).

    make bench      # writes bench/results/cpu-bench.json
CI runs this file with --benchmark-disable: each case runs once, as a smoke test.
"""
import pytest

from bench.cases import CPU_SHAPES, DPO_CASES, LOGPROB_CASES, make_inputs, run_case
from bench.cpu_memory import measure


def _bench(benchmark, name, kind):
    shape = CPU_SHAPES[kind]
    inp = make_inputs(name, shape)
    benchmark.extra_info.update(case=name, shape=shape, dtype="float32")
    benchmark.pedantic(run_case, args=(name, inp), rounds=5, warmup_rounds=1, iterations=1)
    if not benchmark.disabled:
        benchmark.extra_info["peak_mib"] = measure(name, shape)["peak_mib"]


@pytest.mark.parametrize("name", LOGPROB_CASES)
def test_logprobs(benchmark, name):
    _bench(benchmark, name, "logprobs")


@pytest.mark.parametrize("name", DPO_CASES)
def test_dpo(benchmark, name):
    _bench(benchmark, name, "dpo")
