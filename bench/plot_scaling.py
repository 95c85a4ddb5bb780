"""Plots a longtrain_bench_cpu result: time and peak memory against L, log-log.

    python bench/plot_scaling.py RESULTS.json OUT.png

One line per mixer configuration, skipped lengths left out (the legend says
where a configuration stopped and why). Dotted guides show O(L) and O(L^2)
slopes, anchored at the median of the measurements at the shortest length, so
a line parallel to a guide grows at that rate.
"""
import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def series(results):
    """{mixer: ([L...], [ms...], [peak_mib...], first skip reason or None)}, in file order."""
    out = {}
    by_mixer = defaultdict(list)
    for r in results:
        by_mixer[r["mixer"]].append(r)
    for mixer, rows in by_mixer.items():
        rows = sorted(rows, key=lambda r: r["L"])
        done = [r for r in rows if "skipped" not in r]
        skipped = [r for r in rows if "skipped" in r]
        reason = None
        if skipped:
            first = skipped[0]
            reason = f"from L={first['L']}: {first['skipped']}"
        out[mixer] = ([r["L"] for r in done], [r["ms"] for r in done], [r["peak_mib"] for r in done], reason)
    return out


def guides(ax, xs, ys):
    """Dotted O(L) and O(L^2) lines through the median y at the shortest L."""
    if not xs:
        return
    x0, x1 = min(xs), max(xs)
    at_x0 = sorted(y for x, y in zip(xs, ys) if x == x0)
    y0 = at_x0[len(at_x0) // 2]
    for power, label in ((1, "O(L)"), (2, "O(L²)")):
        ax.plot([x0, x1], [y0, y0 * (x1 / x0) ** power], ":", color="0.4", linewidth=1.2)
        ax.annotate(label, (x1, y0 * (x1 / x0) ** power), textcoords="offset points", xytext=(-4, 4),
                    fontsize=9, color="0.3", ha="right", va="bottom")


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: plot_scaling.py RESULTS.json OUT.png")
    with open(sys.argv[1]) as f:
        bench = json.load(f)
    data = series(bench["results"])

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(15, 6.5))
    # tab10's colours are the most distinct; the marker tells apart lines that share one.
    cmap = plt.get_cmap("tab10")
    markers = "osD^v"
    all_l, all_ms, all_mib = [], [], []
    for i, (mixer, (ls, ms, mib, reason)) in enumerate(data.items()):
        style = dict(color=cmap(i % 10), marker=markers[(i // 10) % len(markers)], markersize=5, linewidth=1.6,
                     linestyle="-" if i < 10 else "--")
        label = mixer if reason is None else f"{mixer} ({reason})"
        ax_t.plot(ls, ms, label=label, **style)
        ax_m.plot(ls, mib, **style)
        all_l += ls
        all_ms += ms
        all_mib += mib
    guides(ax_t, all_l, all_ms)
    guides(ax_m, all_l, all_mib)

    for ax, ylabel, title in ((ax_t, "ms per forward + backward (median)", "time"),
                              (ax_m, "peak CPU allocation (MiB)", "peak memory")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if all_l:
            ax.set_xticks(sorted(set(all_l)))
            ax.set_xticklabels([str(x) for x in sorted(set(all_l))])
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"one mixer layer on CPU — {bench['cpu']}, {bench['threads']} threads, {bench['date']}, "
                 f"torch {bench['torch']}\n"
                 f"d_model {bench['d_model']}, {bench['n_heads']} heads, batch {bench['batch']}, "
                 f"{bench['dtype']}, causal", fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(sys.argv[2], dpi=120)


if __name__ == "__main__":
    main()
