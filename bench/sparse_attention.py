"""longtrain's block-sparse flash attention beside its peers, in one run, on the same tensors.

Peers (../shared/ANCHORS.md): FlexAttention (torch.compile) with the same
pattern, SDPA full causal attention (cuDNN / flash), and HF transformers'
LongformerSelfAttention against longtrain's whole sliding mixer. Times are
medians of triton.testing.do_bench; TFLOP/s count the (query, key) pairs the
pattern allows (4 * D flops per pair forward, 2.5x that backward). Every case
also checks that longtrain and FlexAttention agree on the output.

Usage: python3 bench/sparse_attention.py --lib build-gpu/liblongtrain_torch_ops.so --out results.json [--quick]
           [--lengths 4096,65536] [--no-hf | --hf-only]
"""
import argparse
import faulthandler
import json
import math

import torch
import torch.nn.functional as F

from timing import bench, fwd_bwd, results_head

dev = "cuda"


_flex = None


def flex():
    global _flex
    if _flex is None:
        from torch.nn.attention.flex_attention import flex_attention
        _flex = torch.compile(flex_attention, dynamic=False)
    return _flex


def mask_mod_for(case, L):
    W, G = case.get("window", 0), case.get("global_first", 0)
    if case["pattern"] == "sliding" and case["causal"]:
        return lambda b, h, q, k: (q >= k) & (q - k < W)
    if case["pattern"] == "sliding":
        half = W // 2
        return lambda b, h, q, k: ((q - k).abs() <= half) | (q < G) | (k < G)
    blocks = torch.ops.longtrain.bigbird_blocks(L, case["causal"]).to(dev)
    return lambda b, h, q, k: blocks[q // 128, k // 128]


def pairs_of(mod, L):
    # Exact count, 4K query rows at a time, on the GPU.
    total = 0
    k = torch.arange(L, device=dev)[None, :]
    for s in range(0, L, 4096):
        q = torch.arange(s, min(L, s + 4096), device=dev)[:, None]
        total += int(mod(0, 0, q, k).sum().item())
    return total


def run_case(case, B=1, H=16):
    from torch.nn.attention.flex_attention import create_block_mask
    L, D = case["L"], case["D"]
    torch.manual_seed(0)
    q, k, v = [torch.randn(B, H, L, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    grad = torch.randn(B, H, L, D, device=dev, dtype=torch.bfloat16)
    mod = mask_mod_for(case, L)
    pairs = pairs_of(mod, L)
    flops_f = 4.0 * B * H * pairs * D
    flops_fb = flops_f * 3.5
    ours = lambda: torch.ops.longtrain.sparse_attention(q, k, v, case["pattern"], case.get("window", 0),
                                                        case.get("global_first", 0), case["causal"])
    rec = dict(case=case["name"], B=B, H=H, L=L, D=D, pairs=pairs)
    runs = [("longtrain", ours)]
    try:  # the block mask is built by a compiled function: the eager one materialises L x L at 64K
        bm = torch.compile(create_block_mask)(mod, None, None, L, L, device=dev, BLOCK_SIZE=128)
        fa = flex()
        theirs = lambda: fa(q, k, v, block_mask=bm)
        with torch.no_grad():
            rec["max_abs_diff_vs_flex"] = (ours().float() - theirs().float()).abs().max().item()
        runs.append(("flex", theirs))
    except Exception as e:
        rec["flex_error"] = repr(e)[:300]
        print("flex failed:", rec["flex_error"], flush=True)
    for name, fn in runs:
        torch.cuda.reset_peak_memory_stats()
        f = bench(fn)
        fb = bench(fwd_bwd(fn, [q, k, v], grad))
        rec[name] = dict(fwd_ms=f, fwdbwd_ms=fb, fwd_tflops=flops_f / f / 1e9, fwdbwd_tflops=(flops_f + flops_fb) / fb / 1e9,
                         peak_mib=torch.cuda.max_memory_allocated() / 2**20)
    if "flex" in rec:
        rec["speedup_vs_flex_fwd"] = rec["flex"]["fwd_ms"] / rec["longtrain"]["fwd_ms"]
        rec["speedup_vs_flex_fwdbwd"] = rec["flex"]["fwdbwd_ms"] / rec["longtrain"]["fwdbwd_ms"]
    if case["causal"] and L <= 16384:
        sd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        rec["sdpa_full_causal"] = dict(fwd_ms=bench(sd), fwdbwd_ms=bench(fwd_bwd(sd, [q, k, v], grad)))
        rec["speedup_vs_sdpa_fwdbwd"] = rec["sdpa_full_causal"]["fwdbwd_ms"] / rec["longtrain"]["fwdbwd_ms"]
    print(json.dumps(rec), flush=True)
    return rec


class LongformerLayer(torch.nn.Module):
    """longtrain's sliding mixer (model/sparse_mixer.cpp) with global tokens:
    q/k/v, global q/k/v and output projections around the kernel."""

    def __init__(self, hidden, heads, window, global_first):
        super().__init__()
        self.qkv = torch.nn.Linear(hidden, 3 * hidden)
        self.global_qkv = torch.nn.Linear(hidden, 3 * hidden)
        self.out = torch.nn.Linear(hidden, hidden)
        self.heads, self.window, self.global_first = heads, window, global_first

    def forward(self, x):
        B, L, C = x.shape
        # as model/rope.cpp's split_qkv: unbound along the fused dim before the
        # transpose, so the backward's stack lands in the projection's layout
        split = lambda t: [u.transpose(1, 2) for u in t.view(B, L, 3, self.heads, C // self.heads).unbind(2)]
        q, k, v = split(self.qkv(x))
        gq, gk, gv = split(self.global_qkv(x))
        y = torch.ops.longtrain.sparse_attention(q, k, v, "sliding", self.window, self.global_first, False, gq, gk, gv)
        return self.out(y.transpose(1, 2).reshape(B, L, C))


def run_hf(L, W=512, G=64, hidden=768, H=12):
    x = torch.randn(1, L, hidden, device=dev, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)
    layer = LongformerLayer(hidden, H, W, G).to(dev, torch.bfloat16)
    ours = lambda: layer(x)
    rec = dict(case="longformer_layer_vs_hf", L=L, window=W, global_first=G, hidden=hidden, heads=H)
    rec["longtrain"] = dict(fwd_ms=bench(ours), fwdbwd_ms=bench(fwd_bwd(ours, [x], grad)))
    try:
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import LongformerSelfAttention
        cfg = LongformerConfig(hidden_size=hidden, num_attention_heads=H, attention_window=[W],
                               attention_probs_dropout_prob=0.0)
        m = LongformerSelfAttention(cfg, layer_id=0).to(dev, torch.bfloat16)
        mask = torch.zeros(1, L, device=dev, dtype=torch.bfloat16)
        mask[:, :G] = 1
        fn = lambda: m(x, attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=mask > 0,
                       is_global_attn=True)[0]
        rec["hf"] = dict(fwd_ms=bench(fn), fwdbwd_ms=bench(fwd_bwd(fn, [x], grad)))
        rec["speedup_vs_hf_fwdbwd"] = rec["hf"]["fwdbwd_ms"] / rec["longtrain"]["fwdbwd_ms"]
    except Exception as e:  # transformers missing or changed: say so in the results
        rec["hf_error"] = repr(e)[:300]
    print(json.dumps(rec), flush=True)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="16K cases only")
    ap.add_argument("--lengths", default="", help="comma-separated L to run instead (e.g. 4096,65536)")
    ap.add_argument("--no-hf", action="store_true", help="skip the Longformer layer against HF")
    ap.add_argument("--hf-only", action="store_true", help="only the Longformer layer against HF")
    a = ap.parse_args()
    faulthandler.enable()
    torch.ops.load_library(a.lib)
    cases = []
    lengths = [int(x) for x in a.lengths.split(",") if x] or ([16384] if a.quick else [16384, 4096, 65536])
    for L in [] if a.hf_only else lengths:
        cases.append(dict(name="sliding_causal_w512", pattern="sliding", window=512, causal=True, L=L, D=64))
        if L == 4096:
            continue
        cases.append(dict(name="longformer_w512_g64", pattern="sliding", window=512, global_first=64, causal=False, L=L, D=64))
        cases.append(dict(name="bigbird_128_3_2_3", pattern="bigbird", causal=False, L=L, D=64))
        if L == 16384:
            cases.append(dict(name="sliding_causal_w512", pattern="sliding", window=512, causal=True, L=L, D=128))
    result = results_head()
    def save():  # after every case: a run cut short still leaves its results
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    for c in cases:
        try:
            result["cases"].append(run_case(c))
        except Exception as e:
            result["cases"].append(dict(case=c["name"], L=c["L"], D=c["D"], error=repr(e)[:500]))
            print("ERROR", c, repr(e)[:500], flush=True)
        save()
    if not a.no_hf:
        try:
            result["hf"] = run_hf(16384)
        except Exception as e:
            result["hf"] = dict(error=repr(e)[:500])
        save()
    print(f"\n{'case':28} {'L':>6} {'D':>4} {'ours f/fb ms':>16} {'flex f/fb ms':>16} {'x flex fb':>9} {'TFLOP/s fb':>10}")
    for r in result["cases"]:
        if "error" in r:
            print(f"{r['case']:28} {r['L']:>6} {r['D']:>4} ERROR {r['error'][:80]}")
            continue
        o, f = r["longtrain"], r.get("flex", dict(fwd_ms=math.nan, fwdbwd_ms=math.nan))
        print(f"{r['case']:28} {r['L']:>6} {r['D']:>4} {o['fwd_ms']:7.3f}/{o['fwdbwd_ms']:7.3f} "
              f"{f['fwd_ms']:7.3f}/{f['fwdbwd_ms']:7.3f} {r.get('speedup_vs_flex_fwdbwd', math.nan):9.2f} "
              f"{o['fwdbwd_tflops']:10.1f}")
    print("hf:", json.dumps(result.get("hf", "not run (--no-hf)")))


if __name__ == "__main__":
    main()
