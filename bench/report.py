"""Turns the newest benchmark results into what people read: a PNG plot per GPU run and the README's
Performance tables (markdown, printed; paste between the README markers).

    python -m bench.report [--results bench/results] [--png]
"""
from __future__ import annotations

import argparse
import glob
import json
import os


def _newest(results, pattern):
    files = sorted(glob.glob(os.path.join(results, pattern)), key=os.path.getmtime)
    return files[-1] if files else None


def loss_table(path):
    r = json.load(open(path))
    rows = [x for x in r["random"] if "median_ms" in x]
    roof = next(x["median_ms"] for x in rows if x["pass"] == "3 GEMMs (6NHV)")
    s = r["shape"]
    out = [f"Fused DPO loss, {r['device']}, torch {r['torch']}, triton {r['triton']}, {r['date']}: "
           f"H={s['H']}, V={s['V']}, N={s['N']} completion tokens ({s['pairs']} pairs x {s['T']}), {s['dtype']}, "
           "random hidden states (`bench/results/" + os.path.basename(path) + "`).", "",
           "| implementation | pass | median ms | x cuBLAS 6NHV | peak MiB |", "|---|---|---|---|---|"]
    for x in rows:
        out.append(f"| {x['impl']} | {x['pass']} | {x['median_ms']:.1f} | {x['median_ms'] / roof:.2f} | "
                   f"{x['peak_mib']:.0f} |")
    return "\n".join(out)


def sweep_table(path):
    r = json.load(open(path))
    out = [f"Shape sweep, {r['device']}, {r['date']} (`bench/results/{os.path.basename(path)}`): "
           "roofline = the same GEMMs in cuBLAS.", "",
           "| head | N | DPO fwd+bwd ms | cuBLAS 3 GEMMs ms | roofline / ours | ref forward x 1 GEMM | peak MiB |",
           "|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        out.append(f"| {x['head']} | {x['N']} | {x['dpo_ms']:.1f} | {x['gemm3_ms']:.1f} | "
                   f"{x['dpo_roofline_ratio']:.2f} | {x['ref_fwd_x_gemm']:.2f} | {x['dpo_peak_mib']:.0f} |")
    return "\n".join(out)


def cpu_table(path):
    r = json.load(open(path))
    m = r["machine_info"]
    by = {b["extra_info"]["case"]: b for b in r["benchmarks"]}
    out = [f"CPU ({m.get('cpu', {}).get('brand_raw', m.get('machine'))}, {os.cpu_count()} cores, torch "
           f"{r.get('extra', {}).get('torch', '')}), float32, "
           f"shapes {json.dumps(by[next(iter(by))]['extra_info']['shape'])} "
           "(logprobs) and the dpo shape in bench/cases.py, median of 5 (`bench/results/"
           + os.path.basename(path) + "`).",
           "", "| case | median ms | x naive time | peak MiB | x naive memory |", "|---|---|---|---|---|"]
    for kind in ("logprobs", "dpo"):
        naive = by[f"{kind}/naive"]
        for name, b in by.items():
            if not name.startswith(kind):
                continue
            t, nt = b["stats"]["median"] * 1e3, naive["stats"]["median"] * 1e3
            pm, npm = b["extra_info"].get("peak_mib"), naive["extra_info"].get("peak_mib")
            mem = f"{pm:.0f} | {pm / npm:.2f}" if pm and npm else "- | -"
            out.append(f"| {name} | {t:.0f} | {t / nt:.2f} | {mem} |")
    return "\n".join(out)


def plot(loss_path, sweep_path, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    r = json.load(open(loss_path))
    rows = [x for x in r["random"] if "median_ms" in x and x["pass"] != "reference forward"]
    a.barh([f"{x['impl']}\n{x['pass']}" for x in rows], [x["median_ms"] for x in rows], color="tab:blue")
    a.set_xlabel("median ms (lower is better)")
    a.set_title(f"DPO fwd+bwd, N={r['shape']['N']}, Llama-3-8B head, {r['device']}", fontsize=9)
    a.invert_yaxis()
    s = json.load(open(sweep_path))
    for head in sorted({x["head"] for x in s["rows"]}):
        xs = [x for x in s["rows"] if x["head"] == head]
        b.plot([x["N"] for x in xs], [x["dpo_roofline_ratio"] for x in xs], marker="o", label=f"{head} DPO fwd+bwd")
        b.plot([x["N"] for x in xs], [1 / x["ref_fwd_x_gemm"] for x in xs], marker="s", ls="--",
               label=f"{head} reference forward")
    b.axhline(0.85, color="gray", lw=0.8, ls=":")
    b.set_xscale("log", base=2)
    b.set_ylim(0.5, 1.05)
    b.set_xlabel("completion tokens N")
    b.set_ylabel("cuBLAS time of the same GEMMs / our time")
    b.legend(fontsize=8)
    b.set_title("fraction of the cuBLAS roofline (dotted: 0.85 target)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--png", action="store_true")
    a = ap.parse_args(argv)
    loss = _newest(a.results, "*-loss.json")
    sweep = _newest(a.results, "*-sweep.json")
    cpu = _newest(a.results, "cpu-bench.json")
    for fn, path in ((loss_table, loss), (sweep_table, sweep), (cpu_table, cpu)):
        if path:
            print(fn(path), end="\n\n")
    if a.png and loss and sweep:
        png = loss.replace("-loss.json", ".png")
        plot(loss, sweep, png)
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
