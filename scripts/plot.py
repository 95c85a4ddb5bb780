"""Charts from `longtrain eval --tasks ... --out REPORT.json` reports.

    python scripts/plot.py REPORT.json [REPORT.json ...] [--out DIR]

Writes into DIR (default: the first report's folder):
  loss_by_position.png   mean loss per window-position bucket, one line per
                         report and window length: a falling curve means later
                         tokens gain from the longer context
  passkey_heatmap.png    passkey accuracy per (length, depth), one panel per report
  accuracy_vs_length.png passkey (mean over depths) and MQAR (one line per
                         number of pairs) accuracy against length, one line per
                         report, so models can be compared at a glance
  lm_vs_length.png       bits per byte against evaluation length
Lengths a model could not take (skipped in the report) are left out. Each
report's "name" (longtrain eval --name) labels it.
"""
import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths):
    reports = []
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        r.setdefault("name", os.path.basename(os.path.dirname(os.path.abspath(p))) or p)
        reports.append(r)
    return reports


def lm_runs(report):
    """Evaluated (not skipped) lm entries of a report."""
    return [e for e in report["tasks"].get("lm", []) if "skipped" not in e]


def plot_loss_by_position(reports, out):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in reports:
        for e in lm_runs(r):
            lp = e["loss_by_position"]
            xs = [s + lp["bucket_size"] / 2 for s, c in zip(lp["start"], lp["count"]) if c]
            ys = [v for v, c in zip(lp["loss"], lp["count"]) if c]
            if xs:
                ax.plot(xs, ys, marker=".", label=f"{r['name']} (L={e['length']})")
    ax.set_xlabel("position in the evaluation window (tokens)")
    ax.set_ylabel("mean loss (nats/token)")
    ax.set_title("Loss by position: does more context help?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def grid(task):
    """accuracy rows with None for skipped cells -> NaN."""
    return [[math.nan if v is None else v for v in row] for row in task["accuracy"]]


def plot_passkey(reports, out):
    with_task = [r for r in reports if "passkey" in r["tasks"]]
    if not with_task:
        return False
    n = len(with_task)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False)
    fig.subplots_adjust(wspace=0.4, hspace=0.5)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, r in zip(axes.flat, with_task):
        t = r["tasks"]["passkey"]
        im = ax.imshow(grid(t), vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        ax.set_xticks(range(len(t["depths"])), [f"{d:g}" for d in t["depths"]])
        ax.set_yticks(range(len(t["lengths"])), [str(l) for l in t["lengths"]])
        ax.set_xlabel("depth of the passkey")
        ax.set_ylabel("length")
        ax.set_title(r["name"], fontsize=10)
        for i, row in enumerate(t["accuracy"]):
            for j, v in enumerate(row):
                ax.text(j, i, "skip" if v is None else f"{100 * v:.0f}", ha="center", va="center",
                        color="white" if v is None or v < 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy")
    fig.suptitle("Passkey retrieval accuracy (%)")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def length_axis(ax, lengths):
    """Log-2 axis labelled with the evaluated lengths themselves."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(lengths))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def plot_accuracy_vs_length(reports, out):
    has_pk = any("passkey" in r["tasks"] for r in reports)
    has_mq = any("mqar" in r["tasks"] for r in reports)
    panels = [p for p, ok in (("passkey", has_pk), ("mqar", has_mq)) if ok]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, task in zip(axes[0], panels):
        for k, r in enumerate(reports):
            t = r["tasks"].get(task)
            if not t:
                continue
            color = f"C{k % 10}"
            if task == "passkey":
                ax.plot(t["lengths"], [mean(row) for row in t["accuracy"]], marker="o", color=color, label=r["name"])
            else:
                styles = ["-", "--", ":", "-."]
                for j, pairs in enumerate(t["pairs"]):
                    ys = [math.nan if row[j] is None else row[j] for row in t["accuracy"]]
                    ax.plot(t["lengths"], ys, marker="o", color=color, linestyle=styles[j % len(styles)],
                            label=f"{r['name']} ({pairs} pairs)")
        length_axis(ax, [l for r in reports if task in r["tasks"] for l in r["tasks"][task]["lengths"]])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("length (tokens)")
        ax.set_ylabel("accuracy")
        ax.set_title("passkey (mean over depths)" if task == "passkey" else "MQAR")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def plot_lm_vs_length(reports, out):
    fig, ax = plt.subplots(figsize=(6, 4.5))
    any_line = False
    for r in reports:
        runs = lm_runs(r)
        if runs:
            any_line = True
            ax.plot([e["length"] for e in runs], [e["bits_per_byte"] for e in runs], marker="o", label=r["name"])
    if not any_line:
        plt.close(fig)
        return False
    length_axis(ax, [e["length"] for r in reports for e in lm_runs(r)])
    ax.set_xlabel("evaluation window (tokens)")
    ax.set_ylabel("bits per byte")
    ax.set_title("Language modelling (Longformer protocol)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--out", help="output folder (default: the first report's folder)")
    args = ap.parse_args()
    reports = load(args.reports)
    out = args.out or os.path.dirname(os.path.abspath(args.reports[0]))
    os.makedirs(out, exist_ok=True)
    written = []
    if any(lm_runs(r) for r in reports):
        plot_loss_by_position(reports, os.path.join(out, "loss_by_position.png"))
        written.append("loss_by_position.png")
    if plot_lm_vs_length(reports, os.path.join(out, "lm_vs_length.png")):
        written.append("lm_vs_length.png")
    if plot_passkey(reports, os.path.join(out, "passkey_heatmap.png")):
        written.append("passkey_heatmap.png")
    if plot_accuracy_vs_length(reports, os.path.join(out, "accuracy_vs_length.png")):
        written.append("accuracy_vs_length.png")
    for w in written:
        print(os.path.join(out, w))


if __name__ == "__main__":
    main()
