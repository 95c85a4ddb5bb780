"""longtrain's causal AFT kernels beside plain PyTorch, in one run, on the same tensors.

Peers (../shared/ANCHORS.md): the anchor's cumsum form of AFT-simple in bf16
(exp(k - max over L), two cumsums, a division; what a user writes), and for
AFT-conv (window 64, 16 heads) the same form plus the band as 64 shifted
multiply-adds of (e^u - 1); for AFT-full (a learned [L, L] bias w, causal)
the anchor's run_torch_aft form exactly (exp(w) masked, L x L, times
e^(k - max) v and e^(k - max) by matmul), against torch.ops.longtrain.aft_full
(blocked GEMMs, kernels/aft/full_op.cpp) on the same q, k, v, w. Width 1024,
B = 1, L = 4K and 16K, bf16. Times are medians of triton.testing.do_bench;
inputs rotate over enough sets to exceed the L2 cache. GB/s counts the fewest
bytes the op must move (fwd: read q, k, v, write y; fwd+bwd: that plus read
q, k, v, dy and write dq, dk, dv); `kernel_bytes` is what longtrain's kernels
actually move by design (kernels/aft/NOTES.md). Every case also checks both
against an fp64 reference.

Usage: python3 bench/aft.py --lib build-gpu/liblongtrain_torch_ops.so --out results.json
"""
import argparse
import json
import math

import torch

import timing

dev = "cuda"
dt = torch.bfloat16


def bench(fn, rep=200):
    return timing.bench(fn, rep)


def torch_aft_simple(q, k, v):
    # The anchor's form (../shared/bench/peers_reference.py).
    kmax = k.amax(dim=1, keepdim=True).detach()
    ek = torch.exp(k - kmax)
    num = torch.cumsum(ek * v, dim=1)
    den = torch.cumsum(ek, dim=1)
    return torch.sigmoid(q) * num / den


def torch_aft_conv(q, k, v, u, window):
    # The cumsum form plus the band: Σ_j (e^{u_j} - 1) e^{k_{t-j}} (v_{t-j}, 1).
    B, L, d = q.shape
    kmax = k.amax(dim=1, keepdim=True).detach()
    ek = torch.exp(k - kmax)
    ekv = ek * v
    num, den = torch.cumsum(ekv, dim=1), torch.cumsum(ek, dim=1)
    eu = (torch.exp(u) - 1).repeat_interleave(d // u.shape[0], 0).to(q.dtype)  # [d, window]
    for j in range(min(window, L)):
        num = num + eu[:, j] * torch.nn.functional.pad(ekv, (0, 0, j, 0))[:, :L]
        den = den + eu[:, j] * torch.nn.functional.pad(ek, (0, 0, j, 0))[:, :L]
    return torch.sigmoid(q) * num / den


def torch_aft_full(q, k, v, w):
    # ../shared/bench/peers_reference.py run_torch_aft's aft_full, as written there.
    L = q.shape[1]
    mask = torch.ones(L, L, device=q.device, dtype=torch.bool).tril()
    kmax = k.amax(dim=1, keepdim=True).detach()
    ew = torch.exp(w).masked_fill(~mask, 0)        # T x T
    ek = torch.exp(k - kmax)
    num = ew @ (ek * v)
    den = ew @ ek
    return torch.sigmoid(q) * num / den


def full_reference64(q, k, v, w):
    # Row blocks in fp64 on the GPU (an fp64 [L, L] would be 2 GiB at 16K).
    q, k, v, w = (t.detach().double() for t in (q, k, v, w))
    L = q.shape[1]
    ek = torch.exp(k - k.amax(dim=1, keepdim=True))
    ekv = ek * v
    out = torch.empty_like(q)
    for r0 in range(0, L, 2048):
        r1 = min(L, r0 + 2048)
        wb = w[r0:r1, :r1].masked_fill(torch.arange(r1, device=w.device)[None, :] >
                                       torch.arange(r0, r1, device=w.device)[:, None], float("-inf"))
        p = torch.exp(wb - wb.amax(1, keepdim=True))
        out[:, r0:r1] = torch.sigmoid(q[:, r0:r1]) * (p @ ekv[:, :r1]) / (p @ ek[:, :r1])
    return out


def conv_reference64(q, k, v, u, window):
    q, k, v, u = (t.detach().double() for t in (q, k, v, u))
    B, L, d = q.shape
    ek = torch.exp(k - k.amax(dim=1, keepdim=True))
    num, den = torch.cumsum(ek * v, 1), torch.cumsum(ek, 1)
    eu = (torch.exp(u) - 1).repeat_interleave(d // u.shape[0], 0)
    for j in range(min(window, L)):
        num[:, j:] += eu[:, j] * (ek * v)[:, :L - j]
        den[:, j:] += eu[:, j] * ek[:, :L - j]
    return torch.sigmoid(q) * num / den


def reference64(q, k, v):
    # fp64 has the range for unit-variance keys: one shift per channel is enough.
    q, k, v = (t.detach().double() for t in (q, k, v))
    ek = torch.exp(k - k.amax(dim=1, keepdim=True))
    return torch.sigmoid(q) * torch.cumsum(ek * v, 1) / torch.cumsum(ek, 1)


def rotating(sets, fn, backward, extra=()):
    state = {"i": 0}

    def step():
        q, k, v, g = sets[state["i"] % len(sets)]
        state["i"] += 1
        if backward:
            for t in (q, k, v, *extra):
                t.grad = None
            fn(q, k, v).backward(g)
        else:
            with torch.no_grad():
                fn(q, k, v)
    return step


def run_full_case(L, d=1024, B=1, block=0):
    # The bias is one [L, L] bf16 leaf, as in run_torch_aft, the same tensor
    # for both. The peer's own memory is O(L^2) several times over, so both
    # are timed with one input set: w alone (0.5 GiB at 16K) exceeds the L2
    # cache, and the GEMMs re-read their operands anyway.
    q, k, v = (torch.randn(B, L, d, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
    g = torch.randn(B, L, d, device=dev, dtype=dt)
    w = (torch.randn(L, L, device=dev) * 0.5).to(dt).requires_grad_()
    sets = [(q, k, v, g)]
    rec = dict(case="aft_full_causal" + (f"_block{block}" if block else ""), B=B, L=L, d=d, dtype="bf16",
               w_dtype="bf16", input_sets=1, block=block or torch.ops.longtrain.aft_full_default_block(L))
    ref = full_reference64(q, k, v, w)
    ours = lambda q, k, v: torch.ops.longtrain.aft_full(q, k, v, w, True, block)
    peer = lambda q, k, v: torch_aft_full(q, k, v, w)
    for name, fn in (("longtrain", ours), ("torch", peer)):
        with torch.no_grad():
            out = fn(q, k, v).double()
        err = ((out - ref).norm() / ref.norm()).item()
        del out
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        f_ms = bench(rotating(sets, fn, False), rep=50)
        fb_ms = bench(rotating(sets, fn, True, extra=(w,)), rep=50)
        rec[name] = dict(fwd_ms=f_ms, fwdbwd_ms=fb_ms, rel_err_vs_fp64=err,
                         fwd_tflops=2 * L * L * d * 2 / 2 / f_ms / 1e9,
                         fwdbwd_tflops=6 * L * L * d * 2 / 2 / fb_ms / 1e9,
                         peak_mib=torch.cuda.max_memory_allocated() / 2**20,
                         peak_above_inputs_mib=(torch.cuda.max_memory_allocated() - base) / 2**20)
    # By design (kernels/aft/NOTES.md): 3 GEMMs of L^2/2 x 2d multiply-adds.
    rec["gemm_flops_fwdbwd"] = 3 * 2 * (L * L / 2) * 2 * d
    rec["speedup_fwd"] = rec["torch"]["fwd_ms"] / rec["longtrain"]["fwd_ms"]
    rec["speedup_fwdbwd"] = rec["torch"]["fwdbwd_ms"] / rec["longtrain"]["fwdbwd_ms"]
    print(json.dumps(rec), flush=True)
    return rec


def run_case(L, d=1024, B=1, window=0, heads=16):
    elem = B * L * d
    tensor_bytes = 2 * elem
    n_sets = max(1, math.ceil(256 * 2**20 / (4 * tensor_bytes)))
    sets = []
    for _ in range(n_sets):
        q, k, v = (torch.randn(B, L, d, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
        sets.append((q, k, v, torch.randn(B, L, d, device=dev, dtype=dt)))
    if window:
        u = (torch.randn(heads, window, device=dev) * 0.5).requires_grad_()
        ours = lambda q, k, v: torch.ops.longtrain.aft_band(q, k, v, u, window)
        peer = lambda q, k, v: torch_aft_conv(q, k, v, u, window)
        rec = dict(case=f"aft_conv_w{window}_h{heads}_causal", B=B, L=L, d=d, dtype="bf16", input_sets=n_sets)
    else:
        ours = lambda q, k, v: torch.ops.longtrain.aft_simple(q, k, v)
        peer = torch_aft_simple
        rec = dict(case="aft_simple_causal", B=B, L=L, d=d, dtype="bf16", input_sets=n_sets)
    q, k, v, _ = sets[0]
    ref = conv_reference64(q, k, v, u, window) if window else reference64(q, k, v)
    for name, fn in (("longtrain", ours), ("torch", peer)):
        with torch.no_grad():
            out = fn(q, k, v).double()
        err = ((out - ref).norm() / ref.norm()).item()
        torch.cuda.reset_peak_memory_stats()
        f_ms = bench(rotating(sets, fn, False))
        fb_ms = bench(rotating(sets, fn, True))
        rec[name] = dict(fwd_ms=f_ms, fwdbwd_ms=fb_ms, rel_err_vs_fp64=err,
                         fwd_gbps=4 * tensor_bytes / f_ms / 1e6, fwdbwd_gbps=11 * tensor_bytes / fb_ms / 1e6,
                         peak_mib=torch.cuda.max_memory_allocated() / 2**20)
    if not window:
        # By design (kernels/aft/NOTES.md): fwd 6.75 tensors (k, v twice, q, y, the
        # saved state), bwd 11.75 (q, k, v, dy twice, dq, dk, dv, the state).
        rec["kernel_bytes"] = dict(fwd=6.75 * tensor_bytes, fwdbwd=18.5 * tensor_bytes)
    rec["speedup_fwd"] = rec["torch"]["fwd_ms"] / rec["longtrain"]["fwd_ms"]
    rec["speedup_fwdbwd"] = rec["torch"]["fwdbwd_ms"] / rec["longtrain"]["fwdbwd_ms"]
    print(json.dumps(rec), flush=True)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.ops.load_library(a.lib)
    result = timing.results_head(matmul=False)
    def attempt(case, L, run):
        # One case; an error is recorded and the rest still run. The JSON is rewritten after each.
        try:
            result["cases"].append(run())
        except Exception as e:
            result["cases"].append(dict(case=case, L=L, error=repr(e)[:500]))
            print("ERROR", case, L, repr(e)[:500], flush=True)
        torch.cuda.empty_cache()
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)

    for window in (0, 64):
        for L in (4096, 16384):
            attempt(f"aft_w{window}", L, lambda: run_case(L, window=window))
    # AFT-full: the default block, then the block sizes around it at 4K and 16K.
    for L, block in ((4096, 0), (4096, 1024), (4096, 2048), (16384, 0), (16384, 512), (16384, 1024)):
        attempt(f"aft_full_block{block}", L, lambda: run_full_case(L, block=block))
    print(f"\n{'case':24} {'L':>6} {'ours f/fb ms':>16} {'torch f/fb ms':>16} {'x fwd':>7} {'x fb':>7} "
          f"{'GB/s f/fb':>11} {'rel err ours/torch':>19}")
    for r in result["cases"]:
        if "error" in r:
            print(f"{r['case']:24} {r['L']:>6} ERROR {r['error'][:80]}")
            continue
        o, t = r["longtrain"], r["torch"]
        rate = (f"{o['fwd_gbps']:5.0f}/{o['fwdbwd_gbps']:5.0f}" if "fwd_gbps" in o else
                f"{o['fwd_tflops']:4.0f}T/{o['fwdbwd_tflops']:4.0f}T")
        mem = f" peak MiB {o['peak_mib']:.0f}/{t['peak_mib']:.0f}" if "peak_above_inputs_mib" in o else ""
        print(f"{r['case']:24} {r['L']:>6} {o['fwd_ms']:7.3f}/{o['fwdbwd_ms']:7.3f} {t['fwd_ms']:7.2f}/{t['fwdbwd_ms']:7.2f} "
              f"{r['speedup_fwd']:7.1f} {r['speedup_fwdbwd']:7.1f} {rate:>11} "
              f"{o['rel_err_vs_fp64']:9.1e}/{t['rel_err_vs_fp64']:8.1e}{mem}")


if __name__ == "__main__":
    main()
