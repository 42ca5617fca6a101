"""The planner's memory model (`nnlite.network.geometry`) against a real training step.

    python benchmarks/memory_model.py [--fp32]

On CUDA: for a grid of plans (2D, 3D isotropic, 3D anisotropic, Hippocampus) two training steps
run as the trainer runs them (fp16 autocast + GradScaler, SGD momentum 0.99 nesterov, gradient
clipping); it prints the predicted peak (`training_memory_bytes`, and the same without the
workspace torch never reports) against `torch.cuda.max_memory_allocated`, and the predicted
activation bytes (`activation_bytes`) against the bytes of the tensors autograd saves.
On CPU: it says so and prints only the activation comparison for small plans (fp32 and bf16
autocast standing in for AMP). Exit code 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnlite.network import build_unet, geometry  # noqa: E402
from nnlite.network.loss import build_loss, deep_supervision_scales, downsample_seg  # noqa: E402
from nnlite.plans import NetworkPlan  # noqa: E402

IN_CHANNELS = 1
NUM_CLASSES = 3
MIB = 2**20
SGD_MOMENTUM = 0.99  # the trainer's optimizer settings (reference §6)
WEIGHT_DECAY = 3e-5
GRAD_CLIP = 12.0
_ISO = ((3, 3, 3),)


def _plan(strides: tuple, kernels: tuple, features: tuple) -> NetworkPlan:
    return NetworkPlan(strides=strides, kernel_sizes=kernels, features_per_stage=features)


# name → (plan, patch, batch size): typical planned configurations at 8 GB.
CUDA_GRID = {
    "2d 256x256": (_plan(((1, 1),) + ((2, 2),) * 6, ((3, 3),) * 7, (32, 64, 128, 256, 512, 512, 512)),
                   (256, 256), 12),
    "3d iso 128^3": (_plan(((1, 1, 1),) + ((2, 2, 2),) * 5, _ISO * 6, (32, 64, 128, 256, 320, 320)),
                     (128, 128, 128), 2),
    "3d aniso 28x256x256": (_plan(((1, 1, 1),) + ((1, 2, 2),) * 2 + ((2, 2, 2),) * 2 + ((1, 2, 2),) * 2,
                                  ((1, 3, 3),) * 2 + _ISO * 5, (32, 64, 128, 256, 320, 320, 320)),
                            (28, 256, 256), 2),
    "hippocampus 40x56x40": (_plan(((1, 1, 1),) + ((2, 2, 2),) * 3, _ISO * 4, (32, 64, 128, 256)),
                             (40, 56, 40), 9),
}
# Small enough for a shared CPU: the three shapes of tests/test_network.py, a little larger.
CPU_GRID = {
    "2d 128x96": (_plan(((1, 1),) + ((2, 2),) * 4, ((3, 3),) * 5, (16, 32, 64, 128, 128)), (128, 96), 4),
    "3d iso 48^3": (_plan(((1, 1, 1),) + ((2, 2, 2),) * 3, _ISO * 4, (16, 32, 64, 128)), (48, 48, 48), 2),
    "3d aniso 16x64x64": (_plan(((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2)), ((1, 3, 3),) * 2 + _ISO * 2,
                                (16, 32, 64, 128)), (16, 64, 64), 2),
}


def _is_weight_copy(t: torch.Tensor) -> bool:
    """Autocast's low-precision copy of a parameter (the model counts it with the weights)."""
    fn = t.grad_fn
    return (fn is not None and type(fn).__name__ == "ToCopyBackward0"
            and type(fn.next_functions[0][0]).__name__ == "AccumulateGrad")


def training_step(plan: NetworkPlan, patch: tuple[int, ...], batch: int, device: str,
                  amp_dtype: torch.dtype | None, steps: int = 1) -> int:
    """Run `steps` training steps; returns the bytes of distinct storages saved for backward in the last."""
    torch.manual_seed(0)
    net = build_unet(plan, IN_CHANNELS, NUM_CLASSES).to(device)
    loss_fn = build_loss(plan, batch_dice=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=SGD_MOMENTUM, nesterov=True,
                                weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler(device, enabled=amp_dtype == torch.float16)
    x = torch.randn(batch, IN_CHANNELS, *patch, device=device)
    seg = torch.randint(0, NUM_CLASSES, (batch, 1, *patch), device=device)
    targets = downsample_seg(seg, deep_supervision_scales(plan))
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    for _ in range(steps):
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.untyped_storage().data_ptr() not in weights and not _is_weight_copy(t):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        optimizer.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(device, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = loss_fn(net(x), targets)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
        scaler.step(optimizer)
        scaler.update()
    return sum(storages.values())


def compare_cuda(fp32: bool) -> None:
    """Predicted vs measured peak and saved bytes for CUDA_GRID."""
    amp = not fp32
    print(f"{'plan':22} {'bs':>3} {'predicted':>10} {'pred-ws':>9} {'measured':>9} {'meas/pred-ws':>12} "
          f"{'act pred':>9} {'act meas':>9} {'ratio':>6}   (MiB, {'fp16 AMP' if amp else 'fp32'})")
    for name, (plan, patch, batch) in CUDA_GRID.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        saved = training_step(plan, patch, batch, "cuda", torch.float16 if amp else None, steps=2)
        measured = torch.cuda.max_memory_allocated() - before
        predicted = geometry.training_memory_bytes(plan, patch, IN_CHANNELS, NUM_CLASSES, batch, amp=amp)
        without_ws = predicted - geometry.WORKSPACE_BYTES
        act = geometry.activation_bytes(plan, patch, IN_CHANNELS, NUM_CLASSES, batch, 2 if amp else 4)
        print(f"{name:22} {batch:>3} {predicted / MIB:>10.0f} {without_ws / MIB:>9.0f} {measured / MIB:>9.0f} "
              f"{measured / without_ws:>12.2f} {act / MIB:>9.0f} {saved / MIB:>9.0f} {act / saved:>6.2f}")


def compare_cpu() -> None:
    """Predicted activation bytes vs saved-tensor bytes on the CPU (bf16 autocast stands in for AMP)."""
    print("no CUDA device: peak memory cannot be measured; comparing saved-for-backward bytes on the CPU")
    print(f"{'plan':22} {'bs':>3} {'dtype':>6} {'predicted':>10} {'measured':>10} {'pred/meas':>9}   (MiB)")
    for name, (plan, patch, batch) in CPU_GRID.items():
        for amp_dtype, nbytes in ((None, 4), (torch.bfloat16, 2)):
            saved = training_step(plan, patch, batch, "cpu", amp_dtype)
            predicted = geometry.activation_bytes(plan, patch, IN_CHANNELS, NUM_CLASSES, batch, nbytes)
            label = "bf16" if amp_dtype else "fp32"
            print(f"{name:22} {batch:>3} {label:>6} {predicted / MIB:>10.1f} {saved / MIB:>10.1f} "
                  f"{predicted / saved:>9.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", action="store_true", help="CUDA: train in fp32 instead of fp16 autocast")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # as the trainer runs
        compare_cuda(args.fp32)
    else:
        compare_cpu()
    return 0


if __name__ == "__main__":
    sys.exit(main())
