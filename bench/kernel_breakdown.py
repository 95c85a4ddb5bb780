"""Where a kernel op's forward+backward time goes, launch by launch.

For each case (the benchmark shapes of bench/linear_attention.py, aft.py and
sparse_attention.py) this runs N forward+backward steps under torch.profiler
and prints every CUDA kernel's mean time per step, largest first, with the
step's wall time: the numbers the kernel NOTES.md predictions are held to.

Usage: python3 bench/kernel_breakdown.py --lib build-gpu/liblongtrain_torch_ops.so \
           [--cases linear16k,linear64k,aft16k,sliding16k] [--out breakdown.json]
"""
import argparse
import json
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import timing

dev = "cuda"
bf16 = torch.bfloat16


def linear_case(L, B=1, H=16, D=64, blhd=False, normalize=False, decay=False):
    """blhd: [B, H, L, D] views of [B, L, H, D] memory, as bench/linear_attention.py passes them;
    decay: bench/linear_attention.py's per-head γ = 1 − 2^(−5−h)."""
    g = torch.Generator(device=dev).manual_seed(L)
    shape = (B, L, H, D) if blhd else (B, H, L, D)
    view = (lambda x: x.transpose(1, 2)) if blhd else (lambda x: x)
    q, k = [(torch.nn.functional.elu(torch.randn(*shape, device=dev, generator=g)) + 1).to(bf16) for _ in range(2)]
    v = torch.randn(*shape, device=dev, generator=g).to(bf16)
    grad = torch.randn(*shape, device=dev, generator=g).to(bf16)
    ins = [t.requires_grad_() for t in (q, k, v)]
    gamma = (1 - 2.0 ** (-5 - torch.arange(H, device=dev, dtype=torch.float64))).float() if decay else None
    return (lambda: torch.ops.longtrain.linear_attention(view(q), view(k), view(v), gamma, normalize)), ins, view(grad)


def aft_case(L, d=1024, chunk=0):
    g = torch.Generator(device=dev).manual_seed(L)
    q, k, v, grad = [torch.randn(1, L, d, device=dev, generator=g).to(bf16) for _ in range(4)]
    ins = [t.requires_grad_() for t in (q, k, v)]
    return (lambda: torch.ops.longtrain.aft_simple(q, k, v, chunk)), ins, grad


def aft_band_case(L, B, d, H, window):
    """Causal AFT-local/conv: bench/aft.py's conv case, or the 134M e2e recipe's AFT-local layer."""
    g = torch.Generator(device=dev).manual_seed(L)
    q, k, v, grad = [torch.randn(B, L, d, device=dev, generator=g).to(bf16) for _ in range(4)]
    u = torch.randn(H, window, device=dev, generator=g).requires_grad_()
    ins = [t.requires_grad_() for t in (q, k, v)] + [u]
    return (lambda: torch.ops.longtrain.aft_band(q, k, v, u, window)), ins, grad


def aft_full_case(L, d=1024, block=0):
    """Causal AFT-full: bench/aft.py's case (bf16 w, the default block)."""
    g = torch.Generator(device=dev).manual_seed(L)
    q, k, v, grad = [torch.randn(1, L, d, device=dev, generator=g).to(bf16) for _ in range(4)]
    w = (torch.randn(L, L, device=dev, generator=g) * 0.5).to(bf16).requires_grad_()
    ins = [t.requires_grad_() for t in (q, k, v)] + [w]
    return (lambda: torch.ops.longtrain.aft_full(q, k, v, w, True, block)), ins, grad


def sliding_case(L, B=1, H=16, D=64, window=512, pattern="sliding", global_first=0, causal=True):
    torch.manual_seed(0)
    q, k, v = [torch.randn(B, H, L, D, device=dev, dtype=bf16, requires_grad=True) for _ in range(3)]
    grad = torch.randn(B, H, L, D, device=dev, dtype=bf16)
    return (lambda: torch.ops.longtrain.sparse_attention(q, k, v, pattern, window, global_first, causal)), [q, k, v], grad


def longformer_layer_case(L=16384, hidden=768, heads=12):
    """bench/sparse_attention.py's Longformer layer (the one timed against HF)."""
    from sparse_attention import LongformerLayer
    torch.manual_seed(0)
    x = torch.randn(1, L, hidden, device=dev, dtype=bf16, requires_grad=True)
    layer = LongformerLayer(hidden, heads, 512, 64).to(dev, bf16)
    return (lambda: layer(x)), [x], torch.randn_like(x)


def add_norm_case(aten, rows=65536, d=768):
    """The 134M model's residual add + LayerNorm: kernels/norm, or LibTorch's add and layer_norm."""
    torch.manual_seed(0)
    x, b = [torch.randn(rows, d, device=dev, dtype=bf16, requires_grad=True) for _ in range(2)]
    w = torch.ones(d, device=dev, requires_grad=True)
    bias = torch.zeros(d, device=dev, requires_grad=True)
    grad = torch.randn(rows, d, device=dev, dtype=bf16)
    if aten:
        fn = lambda: torch.nn.functional.layer_norm(x + b, (d,), w.to(bf16), bias.to(bf16), 1e-5)
    else:
        fn = lambda: torch.ops.longtrain.add_norm(x, b, w, bias)
    return fn, [x, b, w, bias], grad


def mlp_case(aten, rows=65536, d=768, hidden=3072):
    """The 134M model's MLP: kernels/mlp (cuBLASLt epilogues), or addmm, gelu, addmm."""
    torch.manual_seed(0)
    x = torch.randn(rows, d, device=dev, dtype=bf16, requires_grad=True)
    w1 = (torch.randn(hidden, d, device=dev) * 0.02).requires_grad_()
    w2 = (torch.randn(d, hidden, device=dev) * 0.02).requires_grad_()
    b1 = torch.zeros(hidden, device=dev, requires_grad=True)
    b2 = torch.zeros(d, device=dev, requires_grad=True)
    grad = torch.randn(rows, d, device=dev, dtype=bf16)
    if aten:
        def fn():
            h = torch.nn.functional.gelu(torch.addmm(b1.to(bf16), x, w1.to(bf16).t()), approximate="tanh")
            return torch.addmm(b2.to(bf16), h, w2.to(bf16).t())
    else:
        fn = lambda: torch.ops.longtrain.gelu_mlp(x, w1, b1, w2, b2)
    return fn, [x, w1, b1, w2, b2], grad


CASES = {
    "linear4k": lambda: linear_case(4096),
    "linear16k": lambda: linear_case(16384),
    "linear64k": lambda: linear_case(65536),
    "linear16k_blhd": lambda: linear_case(16384, blhd=True),
    "linear64k_blhd": lambda: linear_case(65536, blhd=True),
    "linear64k_norm": lambda: linear_case(65536, blhd=True, normalize=True),
    "linear64k_norm_decay": lambda: linear_case(65536, blhd=True, normalize=True, decay=True),
    "aft4k": lambda: aft_case(4096),
    "aft16k": lambda: aft_case(16384),
    "aftconv16k": lambda: aft_band_case(16384, 1, 1024, 16, 64),
    "aftlocal_e2e": lambda: aft_band_case(4096, 16, 768, 12, 256),
    "aftfull4k": lambda: aft_full_case(4096),
    "aftfull16k": lambda: aft_full_case(16384),
    # the scan's chunk (positions per thread) forced, for tuning aft_chunk_size
    **{f"aft16k_chunk{c}": (lambda c=c: aft_case(16384, chunk=c)) for c in (32, 64, 128, 256)},
    "sliding4k": lambda: sliding_case(4096),
    "sliding16k": lambda: sliding_case(16384),
    "sliding16k_d128": lambda: sliding_case(16384, D=128),
    # one layer of the 134M model's sliding step (bench/e2e: batch 16, 12 heads, L 4096)
    "sliding_e2e": lambda: sliding_case(4096, B=16, H=12),
    # bench/sparse_attention.py's Longformer (+-256, 64 global tokens) and BigBird cases
    "longformer16k": lambda: sliding_case(16384, global_first=64, causal=False),
    "bigbird16k": lambda: sliding_case(16384, pattern="bigbird", causal=False),
    "bigbird64k": lambda: sliding_case(65536, pattern="bigbird", causal=False),
    "longformer_layer": longformer_layer_case,
    "addnorm": lambda: add_norm_case(False),
    "addnorm_aten": lambda: add_norm_case(True),
    "mlp": lambda: mlp_case(False),
    "mlp_aten": lambda: mlp_case(True),
}


def breakdown(name, steps=20):
    fn, ins, grad = CASES[name]()
    step = timing.fwd_bwd(fn, ins, grad)
    wall = timing.bench(step)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    per = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name][0] += e.device_time_total / 1000.0 / steps  # ms per step
            per[e.name][1] += 1
    rows = sorted(({"kernel": k[:120], "ms": v[0], "launches_per_step": v[1] / steps} for k, v in per.items()),
                  key=lambda r: -r["ms"])
    busy = sum(r["ms"] for r in rows)
    print(f"== {name}: fwd+bwd {wall:.3f} ms (median), kernels {busy:.3f} ms per step", flush=True)
    for r in rows[:14]:
        print(f"  {r['ms']:8.4f} ms  x{r['launches_per_step']:4.1f}  {r['kernel']}", flush=True)
    return {"case": name, "fwdbwd_ms": wall, "kernel_ms": busy, "kernels": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--cases", default="linear16k,linear64k,aft16k,sliding16k")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.ops.load_library(args.lib)
    out = timing.results_head(matmul=False)
    out["cases"] = [breakdown(c) for c in args.cases.split(",")]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
