"""longtrain's chunked causal linear attention beside its peers, in one run, on the same tensors.

Peers (../shared/ANCHORS.md): flash-linear-attention's chunk_linear_attn (put
its `fla` folder on PYTHONPATH) and the plain-PyTorch chunked form of
../shared/bench/peers_reference.py. All take the same feature-mapped inputs
φq = elu(q) + 1, φk = elu(k) + 1 and v, B=1, H=16, D=64 (bf16); fla reads
[B, L, H, D] and longtrain the same memory as [B, H, L, D] strided views.
Times are medians of triton.testing.do_bench. GB/s count the bytes a fused
kernel must move (forward: q, k, v in, o out; backward: q, k, v, dO in, dq,
dk, dv out), TFLOP/s the chunked products (4 C D + 4 D^2 flops per token
forward with chunk C = 64, twice that backward). Each case also checks
longtrain against fla (same scale, no normaliser) on the output.

Usage: python3 bench/linear_attention.py --lib build-gpu/liblongtrain_torch_ops.so --out results.json [--quick]
"""
import argparse
import datetime
import json
import sys

import torch
import torch.nn.functional as F

from timing import bench, fwd_bwd
from torch_peers import chunked_linear_attn

dev = "cuda"


def run_case(B, H, L, D, results, have_fla):
    g = torch.Generator(device=dev).manual_seed(L)
    raw = [torch.randn(B, L, H, D, device=dev, generator=g) for _ in range(3)]
    q = (F.elu(raw[0]) + 1).to(torch.bfloat16).requires_grad_()  # [B, L, H, D]
    k = (F.elu(raw[1]) + 1).to(torch.bfloat16).requires_grad_()
    v = raw[2].to(torch.bfloat16).requires_grad_()
    grad = torch.randn(B, L, H, D, device=dev, dtype=torch.bfloat16, generator=g)
    t = lambda x: x.transpose(1, 2)  # [B, H, L, D] view of the same memory
    gamma = (1 - 2.0 ** (-5 - torch.arange(H, device=dev, dtype=torch.float64))).float()
    bytes_fwd = 4 * B * H * L * D * 2
    bytes_bwd = 7 * B * H * L * D * 2
    flops_fwd = B * H * L * (4 * 64 * D + 4 * D * D)
    row = {"B": B, "H": H, "L": L, "D": D}

    def record(name, fn, grad_like):
        torch.cuda.reset_peak_memory_stats()
        f = bench(fn)
        fb = bench(fwd_bwd(fn, [q, k, v], grad_like))
        row[name] = {"fwd_ms": f, "fwdbwd_ms": fb, "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                     "fwd_gbps": bytes_fwd / f / 1e6, "fwdbwd_gbps": (bytes_fwd + bytes_bwd) / fb / 1e6,
                     "fwd_tflops": flops_fwd / f / 1e9, "fwdbwd_tflops": 3 * flops_fwd / fb / 1e9}
        print(f"L={L:6d} {name:28s} fwd {f:7.3f} ms  fwd+bwd {fb:7.3f} ms", flush=True)

    lt = torch.ops.longtrain.linear_attention
    record("longtrain_nonorm", lambda: lt(t(q), t(k), t(v), None, False), t(grad))
    record("longtrain_norm", lambda: lt(t(q), t(k), t(v), None, True), t(grad))
    record("longtrain_norm_decay", lambda: lt(t(q), t(k), t(v), gamma, True), t(grad))
    if have_fla:
        from fla.ops.linear_attn import chunk_linear_attn
        record("fla_chunk_linear_attn", lambda: chunk_linear_attn(q, k, v, normalize=False)[0], grad)
        record("fla_chunk_linear_attn_norm", lambda: chunk_linear_attn(q, k, v, normalize=True)[0], grad)
        with torch.no_grad():
            ours = t(lt(t(q) * D ** -0.5, t(k), t(v), None, False)).float()
            theirs = chunk_linear_attn(q, k, v, normalize=False)[0].float()
            row["max_rel_diff_vs_fla"] = ((ours - theirs).abs().max() / theirs.abs().max()).item()
        row["fwdbwd_speedup_vs_fla"] = row["fla_chunk_linear_attn"]["fwdbwd_ms"] / row["longtrain_nonorm"]["fwdbwd_ms"]
        row["fwd_speedup_vs_fla"] = row["fla_chunk_linear_attn"]["fwd_ms"] / row["longtrain_nonorm"]["fwd_ms"]
        print(f"L={L:6d} vs fla: fwd {row['fwd_speedup_vs_fla']:.2f}x  fwd+bwd {row['fwdbwd_speedup_vs_fla']:.2f}x  "
              f"max rel diff {row['max_rel_diff_vs_fla']:.1e}", flush=True)
    if L <= 16384:
        record("torch_chunked", lambda: chunked_linear_attn(t(q), t(k), t(v)), t(grad))
        row["fwdbwd_speedup_vs_torch"] = row["torch_chunked"]["fwdbwd_ms"] / row["longtrain_nonorm"]["fwdbwd_ms"]
    results.append(row)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch.ops.load_library(a.lib)
    try:
        import fla  # noqa: F401
        have_fla = True
    except Exception as e:
        print("fla not importable:", e, file=sys.stderr)
        have_fla = False
    results = []
    for L in ([4096, 16384, 65536]):
        try:
            run_case(1, 16, L, 64, results, have_fla)
        except Exception as e:
            results.append({"L": L, "error": repr(e)[:400]})
            print("error at L", L, e, file=sys.stderr)
        torch.cuda.empty_cache()
    if not a.quick:
        run_case(1, 16, 16384, 128, results, have_fla)
    out = {"device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
           "torch": torch.__version__, "goal": "fwd+bwd <= 0.30 ms at 16K, <= 0.80 ms at 64K (B=1, H=16, D=64)",
           "results": results}
    json.dump(out, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
