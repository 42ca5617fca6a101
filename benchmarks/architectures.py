"""Every built-in preset and every zoo network, trained on the same folds under the same budget: one table.

    python benchmarks/architectures.py [--dataset hippocampus|demo] [--raw RAW] [--work DIR]
        [--folds 0 1] [--epochs 1] [--iters 12] [--width-divisor 4] [--val-cases N] [--only NAME ...]
        [--row NAME=KEY=VALUE ...] [--no-measure] [--device cpu|cuda] [--out TABLE.md]

Plans 3d_fullres into DIR and preprocesses it once (both reused when present; `--dataset demo`
generates the synthetic demo with `python -m nnlite.convert demo RAW` and plans it at the demo's
1 GB CPU budget), then adds one configuration per row that inherits 3d_fullres and shares its
preprocessed data (`plan WORK --add-config NAME --from 3d_fullres --set ...`), every row with the
stage widths divided by --width-divisor:

    arch_plain      the plain U-Net (the default preset's network)
    arch_resenc     ResEnc-M's network on the same topology (1, 3, 4, 6, … residual blocks, 1 decoder unit)
    arch_gates      the plain U-Net with attention gates (network.attention_gates)
    zoo_vnet        nnlite.network.zoo.vnet:build            (Milletari et al. 2016)
    zoo_cicek       nnlite.network.zoo.cicek_unet:build      (Çiçek et al. 2016)
    zoo_attention   nnlite.network.zoo.attention_unet:build  (Oktay et al. 2018)

`--row NAME=KEY=VALUE` adds a row of your own (repeat it for more `--set`s of one row), e.g.
`--row mine=network.architecture=my_nets:build --row 'mine=network.kwargs={"depth": 3}'`.

Each row trains each fold through `python -m nnlite.train` (epochs × iters iterations at batch 2,
seed 0, per-iteration poly LR), and the trainer's sliding-window validation of the fold (without
mirroring, probabilities not saved) gives the Dice. Measured here, in-process, on random patches:
parameters; step time (forward + loss + backward + SGD, batch 2, fp32, median of 3 after a
warm-up; on CUDA when there is one); peak memory of a training step at batch 2 with AMP as on a
GPU and the activations saved for backward among it, measured on the network itself by
nnlite/network/measured_memory.py (saved tensors, logits, parameter state, allocator factor, CUDA
workspace; the number the planner budgets with, the same on any machine); inference time
(one patch, batch 1, eval, no gradients, fp32, median of 3). Finished folds are kept in
DIR/architectures.json (re-read before each write, so two processes may train different --folds at
once, one with --no-measure) and not retrained while the budget is the same. --val-cases N validates
each fold on its first N validation cases only (WORK/splits.json is cut; splits.full.json keeps the
original). Writes a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from nnlite.network.builders import architecture_of, build_network, resolve_builder  # noqa: E402
from nnlite.network.classifier import segmentation_output  # noqa: E402
from nnlite.network.measured_memory import measure_training_step  # noqa: E402
from nnlite.network.loss import build_loss, deep_supervision_scales, downsample_seg  # noqa: E402
from nnlite.plans import load_plans  # noqa: E402

HIPPOCAMPUS = REPO.parent / "shared" / "data" / "Dataset004_Hippocampus"
DEMO_GPU_MEMORY_GB = "1"  # the demo's CPU budget (nnlite/training/demo_run.py)
PARENT = "3d_fullres"
RESENC_M = ["network.encoder=residual", "network.blocks_per_stage={blocks}", "network.conv_per_stage_decoder=1"]
ROWS = {
    "arch_plain": [],
    "arch_resenc": RESENC_M,
    "arch_gates": ["network.attention_gates=true"],
    "zoo_vnet": ["network.architecture=nnlite.network.zoo.vnet:build"],
    "zoo_cicek": ["network.architecture=nnlite.network.zoo.cicek_unet:build"],
    "zoo_attention": ["network.architecture=nnlite.network.zoo.attention_unet:build"],
}
BATCH = 2
RESULTS = "architectures.json"


def run(args: list[str]) -> None:
    """Run a command (python -m nnlite.… with this checkout first on PYTHONPATH), echoing it."""
    print("$", " ".join(args), flush=True)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    subprocess.run(args, check=True, env={**os.environ, "PYTHONPATH": path})


def prepare(raw: Path, work: Path, demo: bool, divisor: int, rows: dict[str, list[str]]) -> None:
    """Generate (demo), plan, preprocess and add every row (each step skipped when already done)."""
    python = sys.executable
    if demo and not (raw / "dataset.json").is_file():
        run([python, "-m", "nnlite.convert", "demo", str(raw)])
    if not (work / "plans.json").is_file():
        budget = ["--gpu-memory-gb", DEMO_GPU_MEMORY_GB] if demo else []
        run([python, "-m", "nnlite.plan", str(raw), str(work), "--configs", PARENT, "--workers", "2", *budget])
    run([python, "-m", "nnlite.preprocess", str(work), "--configs", PARENT, "--workers", "2", "--raw", str(raw)])
    plans = load_plans(work / "plans.json")
    parent = plans.configurations[PARENT].network
    widths = ",".join(str(max(f // divisor, 1)) for f in parent.features_per_stage)
    blocks = ",".join(str(b) for b in (1, 3, 4, 6, 6, 6, 6, 6)[: parent.n_stages])
    for name, sets in rows.items():
        if name in plans.configurations:
            continue
        options = [f"network.features_per_stage=[{widths}]"] + [s.format(blocks=f"[{blocks}]") for s in sets]
        run([python, "-m", "nnlite.plan", str(work), "--add-config", name, "--from", PARENT,
             *[arg for s in options for arg in ("--set", s)]])


def limit_validation(work: Path, n_cases: int) -> None:
    """Cut every fold's validation cases in WORK/splits.json to their first `n_cases` (sorted); the
    training cases stay the fold's. The untouched file is kept as splits.full.json."""
    splits_path, full_path = work / "splits.json", work / "splits.full.json"
    if not full_path.is_file():
        full_path.write_text(splits_path.read_text())
    splits = json.loads(full_path.read_text())
    for split in splits:
        split["val"] = sorted(split["val"])[:n_cases]
    splits_path.write_text(json.dumps(splits, indent=1))


def train(work: Path, name: str, fold: str, epochs: int, iters: int, device: str) -> dict[str, float]:
    """Train one fold; its validation's foreground mean Dice and the wall time of train + validate."""
    started = time.perf_counter()
    run([sys.executable, "-m", "nnlite.train", str(work), "--config", name, "--fold", fold, "--epochs", str(epochs),
         "--iters-per-epoch", str(iters), "--batch-size", str(BATCH), "--val-iters", "2", "--device", device,
         "--seed", "0", "--workers", "1", "--set", "training.lr_step=iteration",
         "--set", "validation.mirroring=false", "--set", "validation.save_probabilities=false", "--overwrite"])
    summary = json.loads((work / "results" / name / f"fold_{fold}" / "validation" / "summary.json").read_text())
    return {"dice": summary["foreground_mean"]["dice"], "seconds": time.perf_counter() - started}


def median_seconds(step: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of `step` over `repeats` calls after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(work: Path, name: str) -> dict[str, float]:
    """Parameters, step time, peak step memory and inference time of a row's network (random data)."""
    plans = load_plans(work / "plans.json")
    config = plans.configurations[name]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = build_network(plans, name).to(device)
    loss_fn = build_loss(config.network, batch_dice=config.batch_dice)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    x = torch.randn(BATCH, plans.num_channels, *config.patch_size, device=device)
    seg = torch.randint(0, plans.num_classes, (BATCH, 1, *config.patch_size), device=device)
    targets = downsample_seg(seg, deep_supervision_scales(config.network))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(segmentation_output(net.train()(x)), targets).backward()
        optimizer.step()
    seconds = median_seconds(step)
    net.eval()
    net.deep_supervision = False

    @torch.no_grad()
    def infer() -> None:
        net(x[:1])
    return {"parameters": sum(p.numel() for p in net.parameters()), "step": seconds,
            "inference": median_seconds(infer), "architecture": architecture_of(config.network)}


def measure_memory(work: Path, name: str) -> dict[str, int]:
    """A training step's peak bytes at batch 2 with AMP and the activations among them, measured on
    the network itself (fake tensors: no memory, under a second)."""
    plans = load_plans(work / "plans.json")
    config = plans.configurations[name]
    builder = resolve_builder(architecture_of(config.network), name)
    step = measure_training_step(builder, config.network, config.patch_size, plans.num_channels,
                                 plans.num_classes, BATCH, amp=True, builder_kwargs=config.network.kwargs)
    return {"memory": step.training_memory_bytes(BATCH, amp=True), "activations": step.activation_bytes}


def record(path: Path, budget: dict, name: str, entry: dict, fold: str | None = None) -> None:
    """Add one fold's result (or a row's measurements) to the results file, re-reading it first so
    that runs of other folds in parallel keep theirs; written to a .tmp file, then renamed."""
    stored = json.loads(path.read_text()) if path.is_file() else {}
    results = stored if stored.get("budget") == budget else {"budget": budget, "rows": {}}
    row = results["rows"].setdefault(name, {"folds": {}})
    if fold is None:
        row.update(entry)
    else:
        row["folds"][fold] = entry
    path.with_suffix(".tmp").write_text(json.dumps(results, indent=1))
    path.with_suffix(".tmp").replace(path)


def load_results(path: Path, budget: dict) -> dict:
    stored = json.loads(path.read_text()) if path.is_file() else {}
    return stored if stored.get("budget") == budget else {"budget": budget, "rows": {}}


def table(results: dict, folds: list[str]) -> list[str]:
    names = list(results)
    plain = results.get("arch_plain", results[names[0]])["step"]
    lines = ["| row | builder | parameters | step (s) | step vs plain | step memory, AMP (MiB) | of which activations "
             "(MiB) | inference / patch (s) | "
             + " | ".join(f"Dice fold {f}" for f in folds) + " | mean Dice |",
             "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(folds) + 1)]
    for name in names:
        r = results[name]
        dice = [r["folds"][f]["dice"] for f in folds]
        lines.append(f"| {name} | `{r['architecture'].split(':')[0].rsplit('.', 1)[-1]}` | {r['parameters']:,} | "
                     f"{r['step']:.2f} | {r['step'] / plain:.2f}× | {r['memory'] / 2**20:.0f} | {r['activations'] / 2**20:.0f} | "
                     f"{r['inference']:.3f} | "
                     + " | ".join(f"{d:.4f}" for d in dice) + f" | {statistics.mean(dice):.4f} |")
    return lines


def parse_rows(extra: list[str]) -> dict[str, list[str]]:
    """`--row NAME=KEY=VALUE`, repeated: rows of your own after the built-in ones."""
    rows = {name: list(sets) for name, sets in ROWS.items()}
    for item in extra:
        name, _, setting = item.partition("=")
        if not name or "=" not in setting:
            raise SystemExit(f"error: --row {item!r}: expected NAME=KEY=VALUE")
        rows.setdefault(name, []).append(setting)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("hippocampus", "demo"), default="hippocampus")
    parser.add_argument("--raw", type=Path, help="raw dataset (default: Hippocampus, or WORK/../demo-raw)")
    parser.add_argument("--work", type=Path, default=Path("bench-architectures"))
    parser.add_argument("--folds", nargs="+", default=["0", "1"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--width-divisor", type=int, default=4)
    parser.add_argument("--only", nargs="+", help="train only these rows (the table shows every finished row)")
    parser.add_argument("--row", action="append", default=[], metavar="NAME=KEY=VALUE")
    parser.add_argument("--device", default="cpu", help="where the folds train (default cpu; e.g. cuda)")
    parser.add_argument("--val-cases", type=int, default=0,
                        help="validate each fold on its first N validation cases only (default: all)")
    parser.add_argument("--no-measure", dest="measure", action="store_false",
                        help="train only (a second process training other folds in parallel)")
    parser.add_argument("--out", type=Path, help="also write the table here (default WORK/architectures.md)")
    args = parser.parse_args()
    demo = args.dataset == "demo"
    raw = args.raw or (args.work.parent / f"{args.work.name}-raw" if demo else HIPPOCAMPUS)
    if not demo and not (raw / "dataset.json").is_file():
        print(f"skipped: {raw} not found")
        return 0
    rows = parse_rows(args.row)
    prepare(raw, args.work, demo, args.width_divisor, rows)
    budget = {"epochs": args.epochs, "iters": args.iters, "batch": BATCH, "width_divisor": args.width_divisor,
              "val_cases": args.val_cases}
    if args.val_cases:
        limit_validation(args.work, args.val_cases)
    path = args.work / RESULTS
    for name in args.only or rows:
        for fold in args.folds:
            if fold not in load_results(path, budget)["rows"].get(name, {}).get("folds", {}):
                record(path, budget, name, train(args.work, name, fold, args.epochs, args.iters, args.device), fold)
        if args.measure and "step" not in load_results(path, budget)["rows"][name]:
            record(path, budget, name, measure(args.work, name))
        if args.measure and "activations" not in load_results(path, budget)["rows"][name]:
            record(path, budget, name, measure_memory(args.work, name))
    results = load_results(path, budget)
    finished = {n: r for n, r in results["rows"].items()
                if "activations" in r and all(f in r["folds"] for f in args.folds)}
    plans = load_plans(args.work / "plans.json")
    header = (f"{args.dataset}, folds {', '.join(args.folds)}, {PARENT} patch {plans.configurations[PARENT].patch_size}, "
              f"widths ÷ {args.width_divisor}, {args.epochs} × {args.iters} iterations at batch {BATCH}, "
              f"{'CUDA' if torch.cuda.is_available() else 'CPU'} ({torch.get_num_threads()} threads)")
    text = "\n".join([header, "", *table(finished, args.folds)]) + "\n"
    print("\n" + text)
    (args.out or args.work / "architectures.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
