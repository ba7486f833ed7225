"""Timing and memory helpers shared by the benchmarks: median time after warm-up (CUDA events through
triton.testing.do_bench on GPU, perf_counter on CPU) and peak allocated memory above a baseline."""
from __future__ import annotations

import gc
import statistics
import time

import torch


def median_ms(fn, device, warmup=3, reps=10):
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup * 25, rep=reps * 40, return_mode="median"))
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_mib(fn, device):
    """Peak memory allocated while fn runs, above what was allocated before (CUDA only; None on CPU)."""
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def device_info(device):
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(device=p.name, sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
    else:
        import platform

        info.update(device=f"cpu ({platform.machine()})", cpus=__import__("os").cpu_count())
    return info
