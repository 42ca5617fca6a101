"""Training-step time of the Hippocampus U-Net (batch 2) against matmul peak and the reference.

    python benchmarks/network.py [--repeats 3] [--rounds 2] [--threads N]
                                 [--reference-python /work/refvenv/bin/python]

One step = zero_grad, forward, deep-supervision Dice+CE loss, backward (no optimizer step). Per
device (CPU fp32 always; CUDA with fp16 autocast when present) it prints the fastest step over
`--rounds` × `--repeats` steps, the GFLOP of a step (convolutions only: forward counted by hooks,
backward taken as 2× forward), the achieved GFLOP/s as a fraction of a large matmul timed in the
same process and, with `--reference-python`, the same step of dynamic_network_architectures'
PlainConvUNet + nnunetv2's loss timed in a subprocess (same shapes, threads and protocol, rounds
alternating with nnlite's) and the ratio reference / nnlite (> 1: nnlite is faster).
Then (unless --no-compile) the same step with the network through `torch.compile` (as
`training.compile: on` does), alternating with the eager step, and the ratio compiled / eager step
time (< 1: compiling pays off; the one-off compile time is printed apart).
Exit code 0; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnlite.network import build_unet, compile_network  # noqa: E402
from nnlite.network.blocks import CONV, CONV_TRANSPOSE  # noqa: E402
from nnlite.network.loss import build_loss, deep_supervision_scales, downsample_seg  # noqa: E402
from nnlite.plans import NetworkPlan  # noqa: E402

HIPPOCAMPUS_PLAN = NetworkPlan(
    strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
    kernel_sizes=((3, 3, 3),) * 4,
    features_per_stage=(32, 64, 128, 256),
)
PATCH = (40, 56, 40)
IN_CHANNELS = 1
NUM_CLASSES = 3
BATCH = 2
WARMUP = 2  # untimed steps (allocator, oneDNN/cuDNN algorithm choice)
BACKWARD_FLOP_FACTOR = 2  # backward = grad wrt input + grad wrt weight, each as costly as the forward


def forward_conv_flops(net: nn.Module, x: torch.Tensor) -> int:
    """FLOPs (2 per multiply-add) of every conv, transposed conv and head in one forward."""
    flops = []

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        k = math.prod(module.kernel_size)
        if isinstance(module, tuple(CONV_TRANSPOSE.values())):
            flops.append(2 * inputs[0].numel() * module.out_channels * k)
        else:
            flops.append(2 * out.numel() * module.in_channels * k)

    hooks = [m.register_forward_hook(count) for m in net.modules()
             if isinstance(m, (*CONV.values(), *CONV_TRANSPOSE.values()))]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return sum(flops)


def matmul_gflops(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best achieved GFLOP/s of an n×n matmul: the practical peak the network is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def time_nnlite_step(device: str, amp: bool, repeats: int, compiled: bool = False) -> tuple[float, int]:
    """Fastest of `repeats` training steps of the Hippocampus plan (seconds), and its forward conv FLOPs."""
    torch.manual_seed(0)
    net = build_unet(HIPPOCAMPUS_PLAN, IN_CHANNELS, NUM_CLASSES).to(device)
    model = compile_network(net, compiled)
    loss_fn = build_loss(HIPPOCAMPUS_PLAN, batch_dice=False)
    x = torch.randn(BATCH, IN_CHANNELS, *PATCH, device=device)
    seg = torch.randint(0, NUM_CLASSES, (BATCH, 1, *PATCH), device=device)
    targets = downsample_seg(seg, deep_supervision_scales(HIPPOCAMPUS_PLAN))
    times = []
    for i in range(WARMUP + repeats):
        _sync(device)
        start = time.perf_counter()
        net.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(x), targets)
        loss.backward()
        _sync(device)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return min(times), forward_conv_flops(net, x)


# Run by the reference interpreter: the same shapes and protocol with dynamic_network_architectures'
# PlainConvUNet (nnU-Net's settings) and nnunetv2's deep-supervised DC_and_CE_loss. Prints JSON.
REFERENCE_SCRIPT = r"""
import json, sys, time
import torch
from torch import nn
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
dev, amp = a["device"], a["amp"]
torch.backends.cudnn.benchmark = dev == "cuda"
conv = {2: nn.Conv2d, 3: nn.Conv3d}[len(a["patch"])]
norm = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[len(a["patch"])]
torch.manual_seed(0)
net = PlainConvUNet(a["in_channels"], len(a["strides"]), a["features"], conv, a["kernels"], a["strides"], 2,
                    a["num_classes"], 2, conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                    nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)
net.apply(InitWeights_He(1e-2))
net = net.to(dev)
n_out = len(a["strides"]) - 1
w = [1 / 2 ** i for i in range(n_out)]
w[-1] = 0
w = [x / sum(w) for x in w]
loss_fn = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
                                                {}, weight_ce=1, weight_dice=1, ignore_label=None,
                                                dice_class=MemoryEfficientSoftDiceLoss), w)
x = torch.randn(a["batch"], a["in_channels"], *a["patch"], device=dev)
seg = torch.randint(0, a["num_classes"], (a["batch"], 1, *a["patch"]), device=dev)
targets, cum = [], [1] * len(a["patch"])
for s in a["strides"][:-1]:
    cum = [c * t for c, t in zip(cum, s)]
    size = [p // c for p, c in zip(a["patch"], cum)]
    targets.append(F.interpolate(seg.float(), size=size, mode="nearest-exact").long())
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
times = []
for i in range(a["warmup"] + a["repeats"]):
    sync()
    start = time.perf_counter()
    net.zero_grad(set_to_none=True)
    with torch.autocast(dev, dtype=torch.float16, enabled=amp):
        loss = loss_fn(net(x), targets)
    loss.backward()
    sync()
    if i >= a["warmup"]:
        times.append(time.perf_counter() - start)
print(json.dumps({"seconds": min(times), "torch": torch.__version__,
                  "parameters": sum(p.numel() for p in net.parameters())}))
"""


def time_reference(python: str, device: str, amp: bool, repeats: int, threads: int) -> dict:
    """Run REFERENCE_SCRIPT under `python`; returns {"seconds", "torch", "parameters"} or {"error"}."""
    args = {
        "strides": HIPPOCAMPUS_PLAN.strides, "kernels": HIPPOCAMPUS_PLAN.kernel_sizes,
        "features": HIPPOCAMPUS_PLAN.features_per_stage, "patch": PATCH, "batch": BATCH,
        "in_channels": IN_CHANNELS, "num_classes": NUM_CLASSES, "threads": threads, "device": device,
        "amp": amp, "warmup": WARMUP, "repeats": repeats,
    }
    proc = subprocess.run([python, "-c", REFERENCE_SCRIPT, json.dumps(args)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def benchmark_device(device: str, amp: bool, args: argparse.Namespace) -> None:
    """Print one block of results for `device`; nnlite and the reference alternate for `args.rounds`."""
    ours, ref, fwd_flops, peak = [], [], 0, 0.0
    dtype = torch.float16 if amp else torch.float32
    for _ in range(args.rounds):  # alternating spreads the noise of a shared machine over both
        seconds, fwd_flops = time_nnlite_step(device, amp, args.repeats)
        ours.append(seconds)
        peak = max(peak, matmul_gflops(device, dtype))
        if args.reference_python:
            ref.append(time_reference(args.reference_python, device, amp, args.repeats, args.threads))
    seconds = min(ours)
    step_gflop = fwd_flops * (1 + BACKWARD_FLOP_FACTOR) / 1e9
    achieved = step_gflop / seconds
    print(f"== {device}, {'fp16 autocast' if amp else 'fp32'}, {args.threads} CPU threads: "
          f"Hippocampus plan, batch {BATCH}, patch {PATCH}")
    print(f"nnlite step:        {seconds:.3f} s   ({step_gflop:.0f} GFLOP, {achieved:.1f} GFLOP/s)")
    print(f"matmul peak:        {peak:.1f} GFLOP/s  -> network reaches {achieved / peak:.0%} of it")
    if not ref:
        return
    failed = [r["error"] for r in ref if "error" in r]
    if failed:
        print(f"reference failed:   {failed[0]}")
        return
    ref_seconds = min(r["seconds"] for r in ref)
    print(f"reference step:     {ref_seconds:.3f} s   (torch {ref[0]['torch']}, {ref[0]['parameters']:,} parameters)")
    print(f"ratio reference / nnlite: {ref_seconds / seconds:.2f}  (> 1: nnlite is faster)")


def compare_compiled(device: str, amp: bool, args: argparse.Namespace) -> float:
    """Print fastest eager and compiled steps over alternating rounds; returns compiled / eager."""
    eager, compiled = [], []
    start = time.perf_counter()
    time_nnlite_step(device, amp, 1, compiled=True)  # compiles (graphs are cached for the rounds)
    compile_seconds = time.perf_counter() - start
    for _ in range(args.rounds):
        eager.append(time_nnlite_step(device, amp, args.repeats)[0])
        compiled.append(time_nnlite_step(device, amp, args.repeats, compiled=True)[0])
    ratio = min(compiled) / min(eager)
    print(f"== {device} torch.compile: eager step {min(eager):.3f} s, compiled step {min(compiled):.3f} s, "
          f"ratio compiled / eager {ratio:.2f} (< 1: compiled is faster); first compile {compile_seconds:.0f} s")
    return ratio


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per round (the fastest counts)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating nnlite/reference rounds")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--reference-python", help="interpreter with nnunetv2 + dynamic_network_architectures")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled / eager comparison")
    args = parser.parse_args(argv)
    if min(args.repeats, args.rounds, args.threads) < 1:
        parser.error("--repeats, --rounds and --threads must be ≥ 1")
    torch.set_num_threads(args.threads)
    benchmark_device("cpu", amp=False, args=args)
    if not args.no_compile:
        compare_compiled("cpu", amp=False, args=args)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # as the reference trainer does
        benchmark_device("cuda", amp=True, args=args)
        if not args.no_compile:
            compare_compiled("cuda", amp=True, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
