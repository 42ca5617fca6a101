"""Plain U-Net vs ResEnc-M vs attention gates on Hippocampus fold 0, under one small equal CPU budget.

    python benchmarks/architectures.py [--work DIR] [--epochs 2] [--iters 20] [--width-divisor 2]

Plans 3d_fullres (nnU-Net's default planner) into DIR and preprocesses it once (both reused when
present), then adds three configurations that inherit 3d_fullres and share its preprocessed data
(`plan WORK --add-config ... --set ...`), all with the stage widths divided by --width-divisor:

    arch_plain    the plain U-Net (2 conv units per stage and decoder level)
    arch_resenc   ResEnc-M's network on the same topology: residual encoder with 1, 3, 4, 6, ...
                  blocks per stage, 1 conv unit per decoder level ("scaled to the CPU": nnU-Net's
                  ResEnc-M plan for Hippocampus asks for batch 58; here every variant uses batch 2)
    arch_gates    the plain U-Net with additive attention gates on the skips (Oktay et al. 2018)

Each trains fold 0 for epochs × iters iterations at batch 2 (seed 0, per-iteration poly LR), then
the trainer's full sliding-window validation of fold 0 (without mirroring, to save time) gives the
Dice. The step time is measured here, in-process: forward + backward + SGD step of a batch of 2
random patches, fp32 on the CPU, the median of 5 steps after one warm-up. The budget is tiny: the
Dice column ranks nothing beyond this budget. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from nnlite.network import build_unet, geometry  # noqa: E402
from nnlite.network.loss import build_loss, deep_supervision_scales, downsample_seg  # noqa: E402
from nnlite.plans import load_plans  # noqa: E402

RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset004_Hippocampus"
PARENT = "3d_fullres"
RESENC_M = ["network.encoder=residual", "network.blocks_per_stage={blocks}", "network.conv_per_stage_decoder=1"]
VARIANTS = {"arch_plain": [], "arch_resenc": RESENC_M, "arch_gates": ["network.attention_gates=true"]}
BATCH = 2


def run(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def prepare(work: Path, divisor: int) -> None:
    """Plan, preprocess and add the three variants (each step skipped when already done)."""
    python = sys.executable
    if not (work / "plans.json").is_file():
        run([python, "-m", "nnlite.plan", str(RAW), str(work), "--configs", PARENT, "--workers", "2"])
    run([python, "-m", "nnlite.preprocess", str(work), "--configs", PARENT, "--workers", "2", "--raw", str(RAW)])
    plans = load_plans(work / "plans.json")
    parent = plans.configurations[PARENT].network
    widths = ",".join(str(max(f // divisor, 1)) for f in parent.features_per_stage)
    blocks = ",".join(str(b) for b in (1, 3, 4, 6, 6, 6, 6, 6)[: parent.n_stages])
    for name, sets in VARIANTS.items():
        if name in plans.configurations:
            continue
        options = [f"network.features_per_stage=[{widths}]"] + [s.format(blocks=f"[{blocks}]") for s in sets]
        run([python, "-m", "nnlite.plan", str(work), "--add-config", name, "--from", PARENT,
             *[arg for s in options for arg in ("--set", s)]])


def train(work: Path, name: str, epochs: int, iters: int) -> float:
    """Train fold 0 and return the validation's foreground mean Dice."""
    run([sys.executable, "-m", "nnlite.train", str(work), "--config", name, "--fold", "0", "--epochs", str(epochs),
         "--iters-per-epoch", str(iters), "--batch-size", str(BATCH), "--val-iters", "2", "--device", "cpu",
         "--seed", "0", "--workers", "1", "--set", "training.lr_step=iteration",
         "--set", "validation.mirroring=false", "--overwrite"])
    summary = json.loads((work / "results" / name / "fold_0" / "validation" / "summary.json").read_text())
    return summary["foreground_mean"]["dice"]


def step_seconds(work: Path, name: str, steps: int = 5) -> float:
    """Median wall time of one training step (forward, Dice+CE with deep supervision, backward, SGD)."""
    plans = load_plans(work / "plans.json")
    config = plans.configurations[name]
    torch.manual_seed(0)
    net = build_unet(config.network, plans.num_channels, plans.num_classes)
    loss_fn = build_loss(config.network, batch_dice=config.batch_dice)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    x = torch.randn(BATCH, plans.num_channels, *config.patch_size)
    seg = torch.randint(0, plans.num_classes, (BATCH, 1, *config.patch_size))
    targets = downsample_seg(seg, deep_supervision_scales(config.network))
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), targets).backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-architectures"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--width-divisor", type=int, default=2)
    args = parser.parse_args()
    if not (RAW / "dataset.json").is_file():
        print(f"skipped: {RAW} not found")
        return 0
    prepare(args.work, args.width_divisor)
    plans = load_plans(args.work / "plans.json")
    rows = []
    for name in VARIANTS:
        dice = train(args.work, name, args.epochs, args.iters)
        net = plans.configurations[name].network
        params = geometry.count_parameters(net, plans.num_channels, plans.num_classes)
        rows.append((name, params, step_seconds(args.work, name), dice))
    plain_step = rows[0][2]
    print(f"\nHippocampus fold 0, 3d_fullres patch {plans.configurations[PARENT].patch_size}, widths ÷ "
          f"{args.width_divisor}, {args.epochs} × {args.iters} iterations at batch {BATCH}, CPU "
          f"({torch.get_num_threads()} threads)\n")
    print("| variant | parameters | step time (s) | step time vs plain | validation Dice (fold 0) |")
    print("|---|---:|---:|---:|---:|")
    for name, params, step, dice in rows:
        print(f"| {name} | {params:,} | {step:.3f} | {step / plain_step:.2f}× | {dice:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
