"""Bar chart of bench/sparse_attention.py results: forward+backward time of
longtrain, FlexAttention and (causal cases) SDPA full attention, per case,
with longtrain's ratio to FlexAttention above each group.

Usage: python3 bench/plot_sparse.py RESULTS.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main():
    data = json.load(open(sys.argv[1]))
    cases = [c for c in data["cases"] if "longtrain" in c]
    labels = [f"{c['case']}\nL={c['L'] // 1024}K D={c['D']}" for c in cases]
    series = [("longtrain", "longtrain"), ("FlexAttention", "flex"), ("SDPA full causal", "sdpa_full_causal")]
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(cases)), 4.5))
    width = 0.27
    for i, (name, key) in enumerate(series):
        xs = [j + (i - 1) * width for j in range(len(cases))]
        ys = [c[key]["fwdbwd_ms"] if key in c else 0 for c in cases]
        ax.bar(xs, ys, width, label=name)
    for j, c in enumerate(cases):
        if "speedup_vs_flex_fwdbwd" in c:
            top = max(c["longtrain"]["fwdbwd_ms"], c.get("flex", {}).get("fwdbwd_ms", 0))
            ax.text(j, top * 1.03, f"{c['speedup_vs_flex_fwdbwd']:.2f}x flex", ha="center", fontsize=8)
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("forward + backward, ms (lower is better)")
    ax.set_title(f"Block-sparse attention, B=1 H=16 bf16 — {data['device']}, {data['date']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
