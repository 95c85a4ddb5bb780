"""Bar chart of bench/e2e results: tokens/s of longtrain and the PyTorch peer
per (mixer, L), with the issue's goals as ticks.

Usage: python3 bench/e2e/plot.py e2e_<date>.json out.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GOALS = {"full": 450e3, "sliding": 500e3, "linear": 450e3}  # tokens/s on one H100 (the issue)


def main(src, dst):
    d = json.load(open(src))
    rows = sorted(d["configs"], key=lambda r: (r["mixer"], r["L"]))
    labels = [f"{r['mixer']}\n{r['L'] // 1024}K" for r in rows]
    ours = [r["longtrain"].get("tokens_per_s", 0) / 1e3 for r in rows]
    peer = [(r.get("peer") or {}).get("tokens_per_s", 0) / 1e3 for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 4))
    ax.bar([i - 0.2 for i in x], ours, 0.4, label="longtrain")
    ax.bar([i + 0.2 for i in x], peer, 0.4, label="PyTorch peer (same run)")
    for i, r in enumerate(rows):
        if r["mixer"] in GOALS and (r["mixer"] != "full" or r["L"] == 4096):  # full's goal is at 4K
            ax.plot([i - 0.4, i + 0.4], [GOALS[r["mixer"]] / 1e3] * 2, "k--", lw=1)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("tokens/s (thousands)")
    ax.set_title(f"134M model, 65,536 tokens per step, {d.get('device', '')} {d.get('date', '')} (dashes: goals)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:3])
