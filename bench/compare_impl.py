"""Side by side: two training runs' metrics.jsonl (same recipe and seed, kernel
vs reference): loss per logged step, the largest difference, and tokens/s.

Usage: python3 bench/compare_impl.py RUN_KERNEL RUN_REFERENCE [--out FILE.json]
"""
import json
import sys


def read(run):
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
    return [r for r in rows if "loss" in r and "tokens_per_s" in r]


def main():
    a, b = read(sys.argv[1]), read(sys.argv[2])
    steps = {r["step"]: r for r in b}
    print(f"{'step':>6} {'loss kernel':>12} {'loss ref':>10} {'diff':>8} {'tok/s kernel':>13} {'tok/s ref':>10}")
    diffs, pairs = [], []
    for r in a:
        o = steps.get(r["step"])
        if not o:
            continue
        d = r["loss"] - o["loss"]
        diffs.append(abs(d))
        pairs.append(dict(step=r["step"], loss_kernel=r["loss"], loss_reference=o["loss"],
                          tokens_per_s_kernel=r["tokens_per_s"], tokens_per_s_reference=o["tokens_per_s"]))
        print(f"{r['step']:>6} {r['loss']:12.4f} {o['loss']:10.4f} {d:+8.4f} {r['tokens_per_s']:13.0f} {o['tokens_per_s']:10.0f}")
    # Throughput from the logged steady state (skip the first log: warm-up, layout building).
    tk = sorted(p["tokens_per_s_kernel"] for p in pairs[1:]) or [0]
    tr = sorted(p["tokens_per_s_reference"] for p in pairs[1:]) or [1]
    summary = dict(max_abs_loss_diff=max(diffs) if diffs else None, median_tokens_per_s_kernel=tk[len(tk) // 2],
                   median_tokens_per_s_reference=tr[len(tr) // 2])
    summary["speedup"] = summary["median_tokens_per_s_kernel"] / summary["median_tokens_per_s_reference"]
    print(json.dumps(summary))
    if "--out" in sys.argv:
        with open(sys.argv[sys.argv.index("--out") + 1], "w") as f:
            json.dump(dict(summary=summary, steps=pairs), f, indent=1)


if __name__ == "__main__":
    main()
