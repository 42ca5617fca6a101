"""End-to-end training throughput: iterations/s per augmentation path and worker count, against a
dummy-data ceiling (and, optionally, nnU-Net's own trainer on the same data).

    python benchmarks/throughput.py [--plans hippocampus demo] [--device auto|cpu|cuda]
        [--workers 2 4] [--paths cpu device] [--iters N] [--rounds R] [--minutes M]
        [--hippocampus-work WORK] [--demo-work WORK]
        [--reference-python /work/refvenv/bin/python [--reference-compile]]

Plans: "hippocampus" = nnlite's 3d_fullres plan of Dataset004_Hippocampus (patch 40×56×40) at batch
2 (--batch-size), "demo" = the 3-channel anisotropic demo data of `nnlite.data.demo_dataset` (its own 3d_fullres
plan, at the plan's batch size). Without a WORK folder each is planned and preprocessed by nnlite
into a temporary folder first.

Each measurement runs real training steps (`trainer.train_step`: forward, Dice+CE with deep
supervision, backward, clipping, SGD; autocast as `training.amp: auto` decides: bf16 on CUDA and on
CPUs with bf16 instructions) of one network per plan:
- ceiling: one ready-made batch already on the device (no loading, no augmentation);
- cpu: the loader with augmentation in N worker processes (`--augment-on cpu`);
- device: workers only crop, the batch is augmented on the training device (`--augment-on device`).
Each is printed as a fraction of the ceiling, with the loader's feed rate alone (batches/s with no
training: how far from starving the step it is). Rounds alternate the measurements so that a
change in machine load hits all alike; medians are printed. On CUDA the clock is read after
`torch.cuda.synchronize()`.

--minutes bounds the run without --reference-python (default 8.5, preparation included):
iterations are cut to fit, and what does not fit is reported as skipped, so that it finishes on a
busy 2-core CPU. With --reference-python (no time bound), nnunetv2's nnUNetTrainer plans and
preprocesses the same raw dataset itself, and in every round, after nnlite's measurements, its
train_step loop runs the same number of iterations at the same batch size, worker count
(nnUNet_n_proc_DA) and device, with no checkpoints and no validation; torch.compile is off like
nnlite's (--reference-compile turns it on). The ratio nnlite / reference is printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnlite.data.demo_dataset import generate_demo_dataset  # noqa: E402
from nnlite.loading.augmentation import augment_config  # noqa: E402
from nnlite.loading.device_augmentation import augment_batch, one_thread_on_cpu  # noqa: E402
from nnlite.loading.loader import BatchSpec, build_loader, make_batch  # noqa: E402
from nnlite.loading.sampling import CaseStore, forced_foreground  # noqa: E402
from nnlite.network.loss import build_loss, deep_supervision_scales, downsample_seg  # noqa: E402
from nnlite.plan import main as plan_main  # noqa: E402
from nnlite.plans import Plans, load_plans  # noqa: E402
from nnlite.preprocess import main as preprocess_main  # noqa: E402
from nnlite.training.config import load_train_config  # noqa: E402
from nnlite.training.distributed import Rank  # noqa: E402
from nnlite.training.folds import preprocessed_dir  # noqa: E402
from nnlite.network.hardware import resolve_device  # noqa: E402
from nnlite.training.trainer import RunState, build_state, train_step  # noqa: E402

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset004_Hippocampus"
DEMO_DATASET = "Dataset990_nnliteDemo"  # a name nnU-Net accepts, for --reference-python
DEMO_CASES = 8  # demo cases generated (sampling draws from them with replacement)
CONFIG = "3d_fullres"
GRAD_CLIP = 12.0  # nnU-Net's
SEED = 0
FEED_SECONDS = 5.0  # at most this long per loader-only feed-rate measurement
COST_BATCHES = 20  # batches timed for the CPU cost per batch
UNLIMITED_MINUTES = 1e6  # the budget with --reference-python (no time promise then)


@dataclass
class Bench:
    """One plan, ready to train: its WORK folder, plans (batch size applied) and cases."""

    name: str
    work: Path
    plans: Plans
    cases: list[str]
    raw: Path  # the raw dataset it came from (for the reference)

    @property
    def batch_size(self) -> int:
        return self.plans.configurations[CONFIG].batch_size


class Budget:
    """Wall-clock budget for nnlite's measurements."""

    def __init__(self, minutes: float):
        self.deadline = time.perf_counter() + 60 * minutes

    def left(self) -> float:
        return self.deadline - time.perf_counter()


# --- data ---------------------------------------------------------------------------------------

def prepare(name: str, tmp: Path, work: Path | None, batch_size: int | None) -> Bench:
    """Plan + preprocess (nnlite's commands) unless `work` already holds them."""
    raw = HIPPOCAMPUS if name == "hippocampus" else tmp / "raw" / DEMO_DATASET
    if work is None:
        work = tmp / f"work_{name}"
        if name == "demo":
            generate_demo_dataset(raw, n_cases=DEMO_CASES, seed=SEED)
        workers = str(max(1, min(4, os.cpu_count() or 1)))
        planned = plan_main([str(raw), str(work), "--configs", CONFIG, "--workers", workers])
        if planned != 0 or preprocess_main([str(work), "--configs", CONFIG, "--raw", str(raw),
                                            "--workers", workers]) != 0:
            raise RuntimeError(f"preparing {name} failed")
    plans = load_plans(work / "plans.json")
    if batch_size is not None:
        plans = replace(plans, configurations={
            **plans.configurations, CONFIG: replace(plans.configurations[CONFIG], batch_size=batch_size)})
    config = load_train_config("default", [f"configuration={CONFIG}"])
    return Bench(name, work, plans, preprocessed_cases(work, plans, config), raw)


def preprocessed_cases(work: Path, plans: Plans, config) -> list[str]:
    """The cases preprocessed for `config.configuration` (those with a `<case>_seg.npy`)."""
    return sorted(p.name[: -len("_seg.npy")] for p in preprocessed_dir(work, plans, config).glob("*_seg.npy"))


# --- measurements -------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(state: RunState, loss_fn: torch.nn.Module, batches: Iterator[dict], warmup: int,
                iters: int) -> float:
    """Iterations/s over `iters` steps after `warmup` steps. The first batch is fetched untimed
    (it starts the workers); after that each step's batch is fetched inside the timed loop."""
    batch = next(batches)
    for _ in range(warmup):
        train_step(state, loss_fn, batch, GRAD_CLIP)
        batch = next(batches)
    synchronize(state.device)
    start = time.perf_counter()
    for i in range(iters):
        train_step(state, loss_fn, batch, GRAD_CLIP)
        if i + 1 < iters:
            batch = next(batches)
    synchronize(state.device)
    return iters / (time.perf_counter() - start)


def first_step_seconds(state: RunState, loss_fn: torch.nn.Module, batches: Iterator[dict]) -> float:
    """One step, timed alone (it also warms the network up): an upper bound of a step's time."""
    batch = next(batches)
    synchronize(state.device)
    start = time.perf_counter()
    train_step(state, loss_fn, batch, GRAD_CLIP)
    synchronize(state.device)
    return time.perf_counter() - start


def dummy_batches(bench: Bench, device: torch.device) -> Iterator[dict]:
    """The same random batch forever, already on the device: the ceiling."""
    config = bench.plans.configurations[CONFIG]
    generator = torch.Generator().manual_seed(SEED)
    data = torch.randn(bench.batch_size, bench.plans.num_channels, *config.patch_size, generator=generator)
    seg = torch.randint(0, bench.plans.num_classes, (bench.batch_size, 1, *config.patch_size),
                        generator=generator, dtype=torch.int16)
    batch = {"data": data.to(device), "cases": [],
             "target": [t.to(device) for t in downsample_seg(seg, deep_supervision_scales(config.network))]}
    return itertools.repeat(batch)


def loader(bench: Bench, path: str, workers: int, device: torch.device):
    return build_loader(bench.work, bench.plans, CONFIG, bench.cases, bench.batch_size, augment=True,
                        seed=SEED, workers=workers, device=device, augment_on=path)


def feed_rate(bench: Bench, path: str, workers: int, device: torch.device) -> float:
    """Batches/s the loader delivers with no training step (ready on the device)."""
    with loader(bench, path, workers, device) as batches:
        for _ in range(2):
            next(batches)
        synchronize(device)
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < FEED_SECONDS and count < 200:
            next(batches)
            count += 1
        synchronize(device)
        return count / (time.perf_counter() - start)


def cpu_costs(bench: Bench, device: torch.device) -> dict[str, tuple[float, float]]:
    """CPU ms per batch, (in a worker, in the training process), of each path: one thread, in this
    process, so other load hardly matters. Device path: crop in the worker, augment_batch here."""
    config = bench.plans.configurations[CONFIG]
    store = CaseStore(bench.work / "preprocessed" / config.data_identifier, bench.cases)
    spec = BatchSpec(store, augment_config(config), tuple(forced_foreground(bench.batch_size)), SEED, True,
                     tuple(deep_supervision_scales(config.network)))
    costs = {}
    for path in ("cpu", "device"):
        path_spec = replace(spec, on_device=path == "device")
        with one_thread_on_cpu(torch.device("cpu")):
            for index in range(COST_BATCHES):  # opens the cases' memory maps, warms the page cache
                make_batch(path_spec, index)
            start = time.process_time()
            made = [make_batch(path_spec, index) for index in range(COST_BATCHES)]
            worker = (time.process_time() - start) / COST_BATCHES
        if path == "cpu":
            costs[path] = (worker * 1e3, 0.0)
            continue
        made = [m.to(device) for m in made]
        synchronize(device)
        start = time.process_time()
        for batch in made:
            augment_batch(batch, spec.cfg, spec.ds_scales)
        synchronize(device)
        costs[path] = (worker * 1e3, (time.process_time() - start) / COST_BATCHES * 1e3)
    return costs


@dataclass
class Plan:
    """How many steps each measurement runs (cut by the time budget)."""

    warmup: int
    iters: int


def step_plan(args: argparse.Namespace, step_s: float, measurements: int, budget: Budget) -> Plan | None:
    """Iterations per measurement that fit the budget left (None: not even one timed step)."""
    per = budget.left() / max(1, measurements)
    fits = int(per / max(step_s, 1e-6)) - args.warmup
    if fits < 1:
        return None
    return Plan(args.warmup, min(args.iters, fits))


def run_plan(bench: Bench, args: argparse.Namespace, device: torch.device, budget: Budget,
             plans_left: int, reference: Callable[[int, int], float] | None) -> dict:
    """Ceiling, every path × worker count (and the reference per worker count), in alternating
    rounds; returns the medians."""
    config = load_train_config("default", [f"configuration={CONFIG}", f"seed={SEED}",
                                           f"device={device.type}", "deterministic=false"])
    state = build_state(bench.plans, config, device, None, Rank())
    network = bench.plans.configurations[CONFIG].network
    loss_fn = build_loss(network, bench.plans.configurations[CONFIG].batch_dice).to(device)
    combos = list(itertools.product(args.paths, args.workers))
    feed_reserve = len(combos) * (FEED_SECONDS + 5)  # the feed rates, measured last
    share = Budget((budget.left() / plans_left - feed_reserve) / 60)
    step_s = first_step_seconds(state, loss_fn, dummy_batches(bench, device))
    results: dict = {"ceiling": [], **{c: [] for c in combos}, **{w: [] for w in args.workers}}
    for round_ in range(args.rounds):
        plan = step_plan(args, step_s, (len(combos) + 1) * (args.rounds - round_), share)
        if plan is None:
            print(f"  round {round_ + 1}: skipped (time budget: one step takes {step_s:.1f} s)", flush=True)
            break
        results["ceiling"].append(timed_steps(state, loss_fn, dummy_batches(bench, device),
                                              plan.warmup, plan.iters))
        for path, workers in combos:
            with loader(bench, path, workers, device) as batches:
                results[(path, workers)].append(timed_steps(state, loss_fn, batches, plan.warmup, plan.iters))
        for workers in args.workers if reference else ():
            results[workers].append(reference(workers, plan.iters))
        print(f"  round {round_ + 1}: {plan.iters} timed steps per measurement after {plan.warmup} warm-up",
              flush=True)
    feeds = {c: feed_rate(bench, *c, device) for c in combos}
    return {"runs": {k: float(np.median(v)) for k, v in results.items() if v}, "feeds": feeds,
            "costs": cpu_costs(bench, device)}


def print_table(medians: dict) -> None:
    runs, feeds = medians["runs"], medians["feeds"]
    reference = {k: v for k, v in runs.items() if isinstance(k, int)}  # worker count → it/s
    ceiling = runs.get("ceiling")
    if ceiling is None:
        print("  no end-to-end figure fitted the time budget; loader feed rates only:")
    else:
        print(f"  ceiling (dummy data on the device, no loading or augmentation): {ceiling:.3f} it/s")
    print(f"  {'path':>6} {'workers':>7} {'it/s':>9} {'of ceiling':>10} {'feed b/s':>9}"
          + (f" {'reference it/s':>14} {'nnlite/ref':>10}" if reference else ""))
    for (path, workers), feed in feeds.items():
        rate = runs.get((path, workers))
        line = f"  {path:>6} {workers:7d} "
        line += f"{rate:9.3f} {rate / ceiling:10.2f}" if rate else f"{'-':>9} {'-':>10}"
        line += f" {feed:9.1f}"
        if workers in reference:
            ref = reference[workers]
            line += f" {ref:14.3f} " + (f"{rate / ref:10.2f}" if rate else f"{'-':>10}")
        print(line, flush=True)
    print("  CPU time per batch (one thread, in-process, so hardly affected by other load):")
    for path, (worker, main) in medians["costs"].items():
        print(f"  {path:>6}: {worker:7.1f} ms in a worker, {main:7.1f} ms in the training process",
              flush=True)


# --- reference ----------------------------------------------------------------------------------

REFERENCE = textwrap.dedent("""
    import json, os, sys, time
    import torch
    args = json.loads(sys.argv[1])
    from nnunetv2.run.run_training import get_trainer_from_args
    device = torch.device(args["device"])
    trainer = get_trainer_from_args(args["dataset"], "3d_fullres", 0, device=device)
    trainer.configuration_manager.configuration["batch_size"] = args["batch_size"]
    trainer.num_iterations_per_epoch, trainer.num_epochs = args["iters"], 1
    trainer.on_train_start()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = trainer.dataloader_train
    batch = next(batches)  # as nnlite's timed_steps: the first batch untimed, then fetched in the loop
    for _ in range(args["warmup"]):
        trainer.train_step(batch)
        batch = next(batches)
    sync()
    start = time.perf_counter()
    for i in range(args["iters"]):
        trainer.train_step(batch)
        if i + 1 < args["iters"]:
            batch = next(batches)
    sync()
    rate = args["iters"] / (time.perf_counter() - start)
    print(json.dumps({"its": rate, "patch": list(trainer.configuration_manager.patch_size),
                      "batch_size": trainer.batch_size}), flush=True)
    os._exit(0)  # its background workers need no orderly shutdown here
""")


def run_reference(python: str, spec: dict, env: dict[str, str]) -> dict:
    """Run REFERENCE in its own session; output goes to a file, not a pipe, because its augmenter's
    worker processes inherit the handles and may outlive it (they are ended with the session)."""
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([python, "-c", REFERENCE, json.dumps(spec)], stdout=log,
                                   stderr=subprocess.STDOUT, env=env, start_new_session=True)
        code = process.wait()
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        log.seek(0)
        text = log.read()
    results = [line for line in text.splitlines() if line.startswith('{"its"')]
    if code != 0 or not results:
        raise RuntimeError(f"reference trainer failed:\n{text[-3000:]}")
    return json.loads(results[-1])


def reference_env(tmp: Path, bench: Bench, args: argparse.Namespace) -> dict[str, str]:
    raw_root = tmp / "ref_raw"
    raw_root.mkdir(exist_ok=True)
    link = raw_root / bench.raw.name
    if not link.exists():
        link.symlink_to(bench.raw.resolve())
    return {**os.environ, "nnUNet_raw": str(raw_root), "nnUNet_preprocessed": str(tmp / "ref_pre"),
            "nnUNet_results": str(tmp / "ref_results"),
            "nnUNet_compile": "t" if args.reference_compile else "f"}


def prepare_reference(bench: Bench, args: argparse.Namespace, device: torch.device,
                      tmp: Path) -> Callable[[int, int], float]:
    """nnU-Net plans and preprocesses the same raw data; returns measure(workers, iters) → its
    trainer's iterations/s (a fresh trainer process per call)."""
    env = reference_env(tmp, bench, args)
    tool = Path(args.reference_python).parent / "nnUNetv2_plan_and_preprocess"
    done = subprocess.run([str(tool), "-d", bench.raw.name.split("_")[0][len("Dataset"):], "-c", CONFIG,
                           "-np", "2"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"reference preprocessing failed:\n{done.stderr[-3000:]}")

    def measure(workers: int, iters: int) -> float:
        # a fresh process: at least one warm-up step (nnlite's network was warmed by its first step)
        spec = dict(dataset=bench.raw.name, device=str(device), batch_size=bench.batch_size,
                    iters=iters, warmup=max(1, args.warmup))
        out = run_reference(args.reference_python, spec, {**env, "nnUNet_n_proc_DA": str(workers)})
        print(f"  reference, {workers} workers: {out['its']:.3f} it/s (its plan: patch {out['patch']}, "
              f"batch {out['batch_size']})", flush=True)
        return out["its"]
    return measure


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plans", nargs="+", choices=("hippocampus", "demo"),
                        default=["hippocampus", "demo"])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--paths", nargs="+", choices=("cpu", "device"), default=["cpu", "device"])
    parser.add_argument("--workers", type=int, nargs="+", help="default: 2 4 on CUDA, 1 2 on CPU")
    parser.add_argument("--iters", type=int, help="timed steps per measurement (default 50 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 10 CUDA, 0 CPU)")
    parser.add_argument("--rounds", type=int,
                        help="alternating rounds, medians printed (default 3 CUDA, 1 CPU)")
    parser.add_argument("--batch-size", type=int, help="hippocampus batch size (default 2; demo: its plan's)")
    parser.add_argument("--minutes", type=float, default=8.5, help="budget for nnlite's measurements")
    parser.add_argument("--hippocampus-work", type=Path, help="nnlite WORK with 3d_fullres preprocessed")
    parser.add_argument("--demo-work", type=Path, help="nnlite WORK of the demo data")
    parser.add_argument("--reference-python", help="python of an environment with nnunetv2")
    parser.add_argument("--reference-compile", action="store_true", help="let nnU-Net torch.compile")
    args = parser.parse_args(argv)
    cuda = resolve_device(args.device).type == "cuda"
    for key, on_cuda, on_cpu in (("workers", [2, 4], [1, 2]), ("iters", 50, 3), ("warmup", 10, 0),
                                 ("rounds", 3, 1)):
        if getattr(args, key) is None:
            setattr(args, key, on_cuda if cuda else on_cpu)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    started = time.perf_counter()
    budget = Budget(args.minutes if not args.reference_python else UNLIMITED_MINUTES)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} threads")
    bound = "no time bound" if args.reference_python else f"budget {args.minutes:.1f} min"
    print(f"device: {name}; worker counts {args.workers}; {bound}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        works = {"hippocampus": args.hippocampus_work, "demo": args.demo_work}
        batch_sizes = {"hippocampus": args.batch_size or 2, "demo": None}  # demo: its plan's
        benches = [prepare(plan, Path(tmp), works[plan], batch_sizes[plan]) for plan in args.plans]
        print(f"prepared in {time.perf_counter() - started:.0f} s", flush=True)
        for i, bench in enumerate(benches):
            plan = bench.name
            config = bench.plans.configurations[CONFIG]
            print(f"\n{plan}: {CONFIG} patch {'×'.join(map(str, config.patch_size))}, "
                  f"batch {bench.batch_size}, "
                  f"{bench.plans.num_channels} channel(s), {len(bench.cases)} cases", flush=True)
            reference = prepare_reference(bench, args, device, Path(tmp)) if args.reference_python else None
            print_table(run_plan(bench, args, device, budget, len(args.plans) - i, reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
