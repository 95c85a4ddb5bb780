"""Collects one bench/e2e run into one JSON: per config (mixer, L) longtrain's
and the PyTorch peer's tokens/s, peak memory and MFU, and their ratios; the
longest-sequence probe; device and date.

MFU counts only computed work: 6 FLOPs per parameter per token for every
matmul (the input embedding is a lookup and is left out) plus attention at
12 * d_model FLOPs per computed (query, key) pair per layer (QK^T and PV,
forward and twice that backward): full causal (L+1)/2 pairs per token,
sliding w=512 the window's average; linear attention has no pairs, its state
products count 12 * d_model * d_head per token and layer. Peak: 989 TFLOP/s,
the H100 SXM's dense bf16 figure (also used for H200, which has the same).

Usage: python3 summarize.py OUT_DIR > OUT_DIR/e2e_<date>.json
"""
import datetime, glob, json, os, statistics, subprocess, sys

D, LAYERS, H, V = 768, 12, 12, 32000
WINDOW = 512
AFT_WINDOW = 256
PEAK_FLOPS = 989e12
WARMUP_STEPS = 5  # run.sh logs every 5 steps; the first interval holds the warm-up


def matmul_params():
    per_layer = 4 * D * D + 8 * D * D  # qkv + out, fc + proj (biases negligible)
    return LAYERS * per_layer + V * D  # + the untied head


def attention_flops_per_token(kind, L):
    if kind == "full":
        return 12 * D * (L + 1) / 2
    if kind in ("sliding", "aftlocal"):  # AFT-local: 4 d per (query, key) pair forward, as attention
        w = min(WINDOW if kind == "sliding" else AFT_WINDOW, L)
        return 12 * D * (w - w * (w - 1) / (2 * L))
    if kind == "aft":  # AFT-simple: elementwise, O(d) per token
        return 0
    return 12 * D * (D // H)  # linear


def flops_per_token(mixer, L):
    kinds = {"hybrid": ["linear"] * 7 + ["full"] + ["linear"] * 4}.get(mixer, [mixer] * LAYERS)
    return 6 * matmul_params() + sum(attention_flops_per_token(k, L) for k in kinds)


def longtrain_result(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {"error": "no metrics.jsonl"}
    steps = [json.loads(l) for l in open(path) if '"eval"' not in l]
    timed = [r for r in steps if r["step"] > WARMUP_STEPS]
    if not timed:
        return {"error": f"{len(steps)} logged steps, none after the warm-up"}
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
            "peak_memory_mib": max(r["memory_bytes"] for r in steps) / 2**20,
            "steps_timed": timed[-1]["step"] - WARMUP_STEPS, "final_loss": steps[-1]["loss"]}


def device_name():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True).stdout.strip().splitlines()[0]
    except Exception:
        return "unknown"


def main():
    out = sys.argv[1]
    peers = {}
    peer_file = os.path.join(out, "peers.jsonl")
    if os.path.exists(peer_file):
        for line in open(peer_file):
            r = json.loads(line)
            peers[(r["mixer"], r["L"])] = r
    configs = []
    for run_dir in sorted(glob.glob(os.path.join(out, "runs", "*"))):
        mixer, tag = os.path.basename(run_dir).split("-")
        L = {"4k": 4096, "16k": 16384, "64k": 65536}[tag]
        fpt = flops_per_token(mixer, L)
        ours = longtrain_result(run_dir)
        peer = {k: v for k, v in peers.get((mixer, L), {"error": "not run"}).items() if k not in ("mixer", "L")}
        for r in (ours, peer):
            if "tokens_per_s" in r:
                r["mfu"] = r["tokens_per_s"] * fpt / PEAK_FLOPS
        row = {"mixer": mixer, "L": L, "batch": 65536 // L, "flops_per_token": fpt, "longtrain": ours, "peer": peer}
        if "tokens_per_s" in ours and "tokens_per_s" in peer:
            row["speed_ratio"] = ours["tokens_per_s"] / peer["tokens_per_s"]
            row["memory_ratio"] = ours["peak_memory_mib"] / peer["peak_memory_mib"]
        configs.append(row)
    longest = []
    probe_file = os.path.join(out, "longest.jsonl")
    if os.path.exists(probe_file):
        longest = [json.loads(l) for l in open(probe_file)]
    result = {"device": device_name(), "date": datetime.date.today().isoformat(),
              "model": "12 layers, d=768, 12 heads, vocab 32000, untied head, RoPE; 65536 tokens/step, bf16, AdamW",
              "peak_flops_assumed": PEAK_FLOPS, "quick": bool(os.environ.get("BENCH_QUICK")),
              "configs": configs, "longest_sequence": longest}
    try:
        import torch
        result["torch"] = torch.__version__
    except Exception:
        pass
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
