"""Timing and memory helpers shared by the benchmarks: median time after warm-up (CUDA events through
triton.testing.do_bench on GPU, perf_counter on CPU), the same for several variants sampled in turn
(interleaved_ms: a drift of the clock or the neighbours' load then reaches every variant alike), and peak
allocated memory above a baseline."""
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


def interleaved_ms(fns: dict, device: torch.device, samples: int = 20, warmup: int = 3) -> dict:
    """{name: {"median_ms", "p10_ms", "p90_ms", "samples"}} for each callable of fns, timed one call at a
    time in rounds (A, B, C, A, B, C, ...; each round starts one variant later, so none is always first
    after the host's own work), after warmup calls of each. CUDA: events around each call, the device
    synchronised between calls; elsewhere perf_counter."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times = {name: [] for name in names}
    cuda = device.type == "cuda"
    for r in range(samples):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if cuda:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fns[name]()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fns[name]()
                times[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10, method="inclusive") if len(ts) > 1 else ts * 9
        out[name] = {"median_ms": statistics.median(ts), "p10_ms": q[0], "p90_ms": q[-1], "samples": len(ts)}
    return out


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
