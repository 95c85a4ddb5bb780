"""Bar chart of bench/linear_attention.py results: forward+backward time of
longtrain, flash-linear-attention and plain-PyTorch chunked linear attention
per length, with longtrain's ratio to fla above each group.

Usage: python3 bench/plot_linear.py RESULTS.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main():
    data = json.load(open(sys.argv[1]))
    rows = [r for r in data["results"] if "longtrain_nonorm" in r]
    labels = [f"L={r['L'] // 1024}K D={r['D']}" for r in rows]
    series = [("longtrain", "longtrain_nonorm"), ("longtrain, normalised", "longtrain_norm"),
              ("fla chunk_linear_attn", "fla_chunk_linear_attn"), ("PyTorch chunked", "torch_chunked")]
    fig, ax = plt.subplots(figsize=(max(6, 2.4 * len(rows)), 4.5))
    width = 0.2
    for i, (name, key) in enumerate(series):
        xs = [j + (i - 1.5) * width for j in range(len(rows))]
        ax.bar(xs, [r[key]["fwdbwd_ms"] if key in r else 0 for r in rows], width, label=name)
    for j, r in enumerate(rows):
        if "fwdbwd_speedup_vs_fla" in r:
            top = max(r[k]["fwdbwd_ms"] for k in ("longtrain_nonorm", "fla_chunk_linear_attn", "torch_chunked") if k in r)
            ax.text(j, top * 1.03, f"{r['fwdbwd_speedup_vs_fla']:.2f}x fla", ha="center", fontsize=8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("forward + backward, ms (lower is better)")
    ax.set_title(f"Causal linear attention, B=1 H=16 bf16 — {data['device']}, {data['date']}", fontsize=10)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.08)  # room for the ratio labels
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=len(series), frameon=False)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
