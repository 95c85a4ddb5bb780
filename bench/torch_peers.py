"""Plain-PyTorch forms of peer computations that more than one benchmark runs
(../shared/bench/peers_reference.py writes them inline, inside its timers)."""
import torch


def chunked_linear_attn(q, k, v, C=64):
    """Causal linear attention, chunked, what a user writes without a kernel
    (peers_reference.run_torch_linear). q, k, v: [B, H, L, D], already
    feature-mapped, L a multiple of C -> [B, H, L, D]."""
    B, H, L, D = q.shape
    n = L // C
    qc, kc, vc = (t.reshape(B, H, n, C, D) for t in (q, k, v))
    kv = torch.einsum("bhncd,bhnce->bhnde", kc, vc)
    kv = torch.cumsum(kv, dim=2) - kv  # the state before each chunk
    inter = torch.einsum("bhncd,bhnde->bhnce", qc, kv)
    s = torch.einsum("bhncd,bhnkd->bhnck", qc, kc).tril()
    intra = torch.einsum("bhnck,bhnke->bhnce", s, vc)
    return (inter + intra).reshape(B, H, L, D)
