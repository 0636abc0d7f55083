"""Training images/s of K peers as K separate networks against the same K stacked into one grouped network
(harness/models/stacked.py), DML's loss, one SGD step per batch, side by side in one run; fp32 and bf16,
eager and compiled where asked.  The script the issue asks to run on a GPU when one is lent.

    python benchmarks/stacked_peers.py [--model cifar_resnet32] [--peers 2,4,8] [--batch 128] [--steps 20]
                                       [--precisions fp32,bf16] [--compile] [--device cuda]

Images/s counts images through all K peers (a DML pair at 100 img/s trains 100 images in both networks).
"""
import harness  # noqa: F401  (the torchvision shim, first)
import argparse
import copy
import time

import timm
import torch
import torch.nn.functional as F

import harness.models  # noqa: F401
from harness.models.stacked import StackedPeers


def dml_loss(logits, y, t=3.0):
    loss = 0.0
    for k, z in enumerate(logits):
        others = [o.detach() for j, o in enumerate(logits) if j != k]
        kl = sum(F.kl_div(F.log_softmax(z / t, 1), F.softmax(o / t, 1), reduction="batchmean") for o in others)
        loss = loss + F.cross_entropy(z, y) + t * t * kl / len(others)
    return loss


def rate(forward, params, x, y, steps, precision, device) -> float:
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    dtype = {"bf16": torch.bfloat16}.get(precision)
    for i in range(steps + 3):
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = forward(x)
        loss = dml_loss([z.float() for z in logits], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return x.shape[0] * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet32")
    parser.add_argument("--peers", default="2,4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precisions", default="fp32")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of each network")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last
    x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 100, (args.batch,), device=device)
    print(f"{args.model}, batch {args.batch}, {args.steps} steps, {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f" ({torch.get_num_threads()} threads)"))
    print(f"{'K':>3} {'precision':>9} {'compiled':>8} {'separate img/s':>15} {'stacked img/s':>14} {'stacked/sep':>11}")
    for k in [int(v) for v in args.peers.split(",")]:
        torch.manual_seed(0)
        nets = [timm.create_model(args.model, num_classes=100) for _ in range(k)]
        # stacked on the CPU, as the engine does (the grouped network is built there), then moved
        stacked = StackedPeers(copy.deepcopy(nets)).to(device, memory_format=fmt)
        nets = [n.to(device, memory_format=fmt) for n in nets]
        for precision in args.precisions.split(","):
            for compiled in ([False, True] if args.compile else [False]):
                sep_nets, stack = copy.deepcopy(nets), copy.deepcopy(stacked)
                if compiled:
                    for n in sep_nets:
                        n.compile()
                    stack.net.compile()
                params = [p for n in sep_nets for p in n.parameters()]
                separate = rate(lambda v: [n(v) for n in sep_nets], params, x, y, args.steps, precision, device)
                grouped = rate(lambda v: stack([v] * k), list(stack.parameters()), x, y, args.steps, precision, device)
                print(f"{k:>3} {precision:>9} {str(compiled):>8} {separate:15.1f} {grouped:14.1f} "
                      f"{grouped / separate:11.2f}")


if __name__ == "__main__":
    main()
