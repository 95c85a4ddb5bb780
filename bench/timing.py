"""Timing helpers shared by the GPU benchmarks (sparse_attention.py,
linear_attention.py, aft.py): medians of triton.testing.do_bench, a
forward+backward step, the machine's matmul / copy ceilings and the JSON head
every result file starts with."""
import datetime
import json
import sys

import torch
from triton.testing import do_bench

dev = "cuda"


def bench(fn, rep=100):
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def fwd_bwd(fn, inputs, grad):
    def step():
        for t in inputs:
            t.grad = None
        fn().backward(grad)
    return step


def peaks(matmul=True):
    out = {}
    if matmul:
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        out["matmul_bf16_tflops"] = 2 * 8192**3 / bench(lambda: a @ b) / 1e9
    x = torch.empty(2 * 1024**3, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    out["copy_tbps"] = 2 * x.numel() / bench(lambda: y.copy_(x)) / 1e9
    return out


def results_head(matmul=True):
    """device, date, torch, command and the ceilings (printed); cases follow."""
    head = dict(device=torch.cuda.get_device_name(), date=datetime.date.today().isoformat(),
                torch=torch.__version__, command=" ".join(sys.argv), peaks=peaks(matmul), cases=[])
    print(json.dumps(head["peaks"]), flush=True)
    return head
