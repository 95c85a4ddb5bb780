"""Bar chart of bench/aft.py results: forward+backward time of longtrain's
causal AFT kernels (simple, conv, full at the default block) beside plain
PyTorch per length, log scale, with the speedup above each pair and issue 6's
goals (AFT-simple 16K <= 0.30 ms, AFT-full 16K <= 3.0 ms) as marks.

Usage: python3 bench/plot_aft.py RESULTS.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

GOALS_MS = {("aft_simple_causal", 16384): 0.30, ("aft_full_causal", 16384): 3.0}


def main():
    data = json.load(open(sys.argv[1]))
    rows = [c for c in data["cases"] if "longtrain" in c and "torch" in c and "_block" not in c["case"]]
    labels = [f"{c['case'].replace('_causal', '').replace('aft_', '')}\nL={c['L'] // 1024}K" for c in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4.5))
    width = 0.38
    for i, (name, key) in enumerate((("longtrain", "longtrain"), ("PyTorch (the anchor's form)", "torch"))):
        xs = [j + (i - 0.5) * width for j in range(len(rows))]
        ax.bar(xs, [c[key]["fwdbwd_ms"] for c in rows], width, label=name)
    goal_drawn = False
    for j, c in enumerate(rows):
        top = max(c["longtrain"]["fwdbwd_ms"], c["torch"]["fwdbwd_ms"])
        ax.text(j, top * 1.15, f"{c['torch']['fwdbwd_ms'] / c['longtrain']['fwdbwd_ms']:.1f}x", ha="center", fontsize=8)
        goal = GOALS_MS.get((c["case"], c["L"]))
        if goal:
            ax.plot([j - width, j], [goal, goal], color="black", linewidth=1.5,
                    label=None if goal_drawn else "goal (issue 6)")
            goal_drawn = True
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("forward + backward, ms (log; lower is better)")
    ax.set_title(f"Causal AFT, B=1 width 1024 bf16 — {data['device']}, {data['date']}", fontsize=10)
    ax.set_ylim(ax.get_ylim()[0], ax.get_ylim()[1] * 2)  # room for the ratio labels
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
