"""The PyTorch peer of bench/e2e: the same 134M model (12 layers, d=768, 12
heads, vocab 32000, untied head, RoPE, pre-LayerNorm, GELU MLP 4x) written the
way a user writes it without longtrain: bf16 autocast, torch.optim.AdamW
(fused=True), eager. Attention per mixer, as ../shared/bench/peers_reference.py
measures the kernels: full -> SDPA (causal); sliding w=512 -> FlexAttention
(compiled, causal sliding block mask, the peers' `flex()`); linear (elu+1) ->
flash-linear-attention's chunk_linear_attn when `fla` imports, else plain
PyTorch chunked linear attention (recorded as `linear_impl`); hybrid -> layer
8 full, the rest linear (bench/e2e/make_recipes.py).

Usage: python3 peer_lm.py --peers .carry/peers_reference.py --out peers.jsonl \
         --steps 15 --warmup 5 full:4096 sliding:16384 ...
Each config prints and appends one JSON line: tokens/s over the timed steps,
peak memory (torch.cuda.max_memory_allocated), or the error.
"""
import argparse, importlib.util, json, os, sys, time, traceback
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from torch_peers import chunked_linear_attn  # noqa: E402 (bench/)

V, D, LAYERS, H = 32000, 768, 12, 12
TOKENS_PER_STEP = 65536
WINDOW = 512


def load_peers(path):
    spec = importlib.util.spec_from_file_location("peers_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rope(x, cos, sin):  # x: [B, H, L, Dh]
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, kind, ctx):
        super().__init__()
        self.kind, self.ctx = kind, ctx
        self.qkv = nn.Linear(D, 3 * D)
        self.out = nn.Linear(D, D)

    def forward(self, x):
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, H, D // H).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, Dh]
        if self.kind == "linear":
            q, k = F.elu(q) + 1, F.elu(k) + 1
            if self.ctx["fla"] is not None:
                y = self.ctx["fla"](q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), normalize=False)[0]
                y = y.transpose(1, 2)
            else:
                y = chunked_linear_attn(q, k, v)
        else:
            q, k = rope(q, *self.ctx["rope"]), rope(k, *self.ctx["rope"])
            if self.kind == "full":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                y = self.ctx["flex"](q, k, v, block_mask=self.ctx["block_mask"])
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, kind, ctx):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = Attention(kind, ctx)
        self.fc, self.proj = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.proj(F.gelu(self.fc(self.n2(x)), approximate="tanh"))


class LM(nn.Module):
    def __init__(self, kinds, ctx):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(Block(k, ctx) for k in kinds)
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, V, bias=False)

    def forward(self, idx, targets):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.float().view(-1, V), targets.reshape(-1))


def layer_kinds(mixer):
    if mixer == "hybrid":
        return ["linear"] * 7 + ["full"] + ["linear"] * 4
    return [mixer] * LAYERS


def run(mixer, L, steps, warmup, peers):
    dev = "cuda"
    ctx = {"fla": None, "flex": None, "block_mask": None}
    Dh = D // H
    inv = 1.0 / (10000 ** (torch.arange(0, Dh, 2, device=dev).float() / Dh))
    ang = torch.arange(L, device=dev).float()[:, None] * inv[None]
    ctx["rope"] = (ang.cos(), ang.sin())
    linear_impl = None
    if mixer in ("linear", "hybrid"):
        try:
            from fla.ops.linear_attn import chunk_linear_attn
            ctx["fla"], linear_impl = chunk_linear_attn, "fla.chunk_linear_attn"
        except Exception:
            linear_impl = "torch_chunked"
    if mixer == "sliding":
        from torch.nn.attention.flex_attention import create_block_mask
        def mod(b, h, qi, ki):
            return (qi >= ki) & (qi - ki < WINDOW)
        ctx["block_mask"] = create_block_mask(mod, None, None, L, L, device=dev, BLOCK_SIZE=128, _compile=True)
        ctx["flex"] = peers.flex()
    torch.manual_seed(0)
    model = LM(layer_kinds(mixer), ctx).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    B = TOKENS_PER_STEP // L
    data = torch.randint(0, V, (B, L + 1), device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(data[:, :-1], data[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return dict(tokens_per_s=steps * TOKENS_PER_STEP / dt, peak_memory_mib=torch.cuda.max_memory_allocated() / 2**20,
                params=sum(p.numel() for p in model.parameters()), linear_impl=linear_impl)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", required=True, help="a copy of ../shared/bench/peers_reference.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("configs", nargs="+", help="mixer:L")
    a = ap.parse_args()
    peers = load_peers(a.peers)
    for c in a.configs:
        mixer, L = c.split(":")
        rec = dict(mixer=mixer, L=int(L), peer="pytorch")
        try:
            rec.update(run(mixer, int(L), a.steps, a.warmup, peers))
        except Exception as e:
            rec["error"] = repr(e)[:300]
            traceback.print_exc(limit=2)
        print(json.dumps(rec), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
