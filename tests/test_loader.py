"""build_loader: batch layout, reproducibility from (seed, i) with any worker count, failures that
name the case, 2D configurations, clean shutdown."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nnlite.common.errors import UserError
from nnlite.loading.augmentation import augment_config
from nnlite.loading import loader as loader_module
from nnlite.loading.loader import LoaderError, build_loader, plan_batch
from nnlite.loading.sampling import CaseStore
from tests.loader_fixtures import DATA_IDENTIFIER, ExplodingStore, toy_dataset, toy_plans

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy(tmp_path):
    return tmp_path, toy_dataset(tmp_path, 4)


def take(loader, n):
    with loader:
        return [next(loader) for _ in range(n)]


def test_batch_layout(toy):
    work, _ = toy
    names = toy_dataset(work, 3, seed=1, channels=2)
    plans = toy_plans((8, 12, 12), channels=2, use_mask=True)
    batch = take(build_loader(work, plans, "3d_fullres", names, 3, augment=True, seed=0, workers=0), 1)[0]
    assert batch["data"].shape == (3, 2, 8, 12, 12) and batch["data"].dtype == torch.float32
    assert [t.shape for t in batch["target"]] == [(3, 1, 8, 12, 12), (3, 1, 4, 6, 6)]
    assert all(t.dtype == torch.int16 and t.min() >= 0 for t in batch["target"])
    assert len(batch["cases"]) == 3 and set(batch["cases"]) <= set(names)


def test_fixed_seed_reproduces_batches_with_any_worker_count(toy):
    work, names = toy
    plans = toy_plans()
    runs = [take(build_loader(work, plans, "3d_fullres", names, 3, augment=True, seed=7, workers=w), 4)
            for w in (0, 2)]
    resumed = take(build_loader(work, plans, "3d_fullres", names, 3, augment=True, seed=7,
                                start_batch=2, workers=1), 2)
    other = take(build_loader(work, plans, "3d_fullres", names, 3, augment=True, seed=8, workers=0), 1)
    for a, b in zip(*runs):
        assert torch.equal(a["data"], b["data"]) and a["cases"] == b["cases"]
        assert all(torch.equal(x, y) for x, y in zip(a["target"], b["target"]))
    for a, b in zip(runs[0][2:], resumed):
        assert torch.equal(a["data"], b["data"])
    assert not torch.equal(runs[0][0]["data"], other[0]["data"])


def test_validation_batches_are_plain_crops_with_oversampling(toy):
    work, names = toy
    plans = toy_plans((8, 12, 12))
    cfg_plan = plans.configurations["3d_fullres"]
    batch = take(build_loader(work, plans, "3d_fullres", names, 3, augment=False, seed=3, workers=0,
                              deep_supervision=False), 1)[0]
    store = CaseStore(work / "preprocessed" / DATA_IDENTIFIER, names)
    samples = plan_batch(store.cases, augment_config(cfg_plan), [False, False, True], 3, 0, False)
    assert [s.forced for s in samples] == [False, False, True] and len(batch["target"]) == 1
    for j, sample in enumerate(samples):
        data, seg = store.arrays(sample.case)
        region = tuple(slice(s, s + p) for s, p in zip(sample.start, (8, 12, 12)))
        if all(s >= 0 for s in sample.start) and all(r.stop <= n for r, n in zip(region, data.shape[1:])):
            np.testing.assert_array_equal(batch["data"][j].numpy(), data[(slice(None), *region)])
            np.testing.assert_array_equal(batch["target"][0][j].numpy(), np.clip(seg[(slice(None), *region)], 0, None))
    assert (batch["target"][0][2] > 0).any()  # the forced sample holds foreground


def test_two_d_configuration_gives_squeezed_slices(toy):
    work, names = toy
    plans = toy_plans((16, 12), name="2d")
    batch = take(build_loader(work, plans, "2d", names, 4, augment=True, seed=1, workers=0), 1)[0]
    assert batch["data"].shape == (4, 1, 16, 12)
    assert [tuple(t.shape) for t in batch["target"]] == [(4, 1, 16, 12), (4, 1, 8, 6)]


def test_worker_user_error_names_the_case(toy):
    work, names = toy
    np.save(work / "preprocessed" / DATA_IDENTIFIER / f"{names[1]}_seg.npy", np.zeros((1, 3, 3, 3), np.int8))
    loader = build_loader(work, toy_plans(), "3d_fullres", [names[1]], 2, augment=True, seed=0, workers=1)
    with pytest.raises(UserError, match=names[1]):
        take(loader, 1)


def test_worker_crash_surfaces_the_case_and_traceback(toy, monkeypatch):
    work, names = toy
    monkeypatch.setattr(loader_module, "CaseStore", ExplodingStore)  # in this process only
    loader = build_loader(work, toy_plans(), "3d_fullres", [names[2]], 2, augment=True, seed=0, workers=1)
    with pytest.raises(LoaderError) as info:
        take(loader, 1)
    message = str(info.value)
    assert names[2] in message and "ZeroDivisionError: boom in the worker" in message
    assert "Traceback" in message and "loader_fixtures.py" in message


def test_missing_case_or_wrong_channels_is_a_user_error(toy):
    work, names = toy
    with pytest.raises(UserError, match="case_missing"):
        build_loader(work, toy_plans(), "3d_fullres", names + ["case_missing"], 2, augment=True, seed=0)
    with pytest.raises(UserError, match="channels"):
        build_loader(work, toy_plans(channels=2), "3d_fullres", names, 2, augment=True, seed=0)


@pytest.mark.slow
def test_ctrl_c_stops_the_loader_and_its_workers(toy):
    work, names = toy
    script = textwrap.dedent(f"""
        import faulthandler, multiprocessing, signal, sys
        # Ctrl-C raises KeyboardInterrupt even if this process inherited an ignored SIGINT, and
        # SIGUSR1 dumps every thread's stack (the test asks for it when the child does not answer).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        faulthandler.register(signal.SIGUSR1)
        sys.path.insert(0, {str(ROOT)!r})
        from tests.loader_fixtures import toy_plans
        from nnlite.loading.loader import build_loader
        loader = build_loader({str(work)!r}, toy_plans(), "3d_fullres", {names!r}, 2, augment=True,
                              seed=0, workers=2)
        next(loader)
        try:
            # Inside the try: the signal may arrive while print is still returning.
            workers = [p.pid for p in multiprocessing.active_children()]
            print("ready", *workers, flush=True)
            while True:
                next(loader)
        except KeyboardInterrupt:
            loader.close()
            print("interrupted", flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        ready, *workers = read_line(process, timeout=120).split()
        assert ready == "ready" and len(workers) >= 2
        process.send_signal(signal.SIGINT)
        assert read_line(process, timeout=60) == "interrupted"
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    deadline = time.monotonic() + 30  # workers exit on their own once the loader closed them
    while any(_alive(int(pid)) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(int(pid)) for pid in workers)


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """The child's next stdout line, or a failure after `timeout` seconds (never a hang) that
    shows where the child was stuck."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            process.send_signal(signal.SIGUSR1)
            time.sleep(1)  # let faulthandler write the stacks before the child is killed
            process.kill()
            pytest.fail(f"no line from the child within {timeout} s; its stacks:\n"
                        f"{process.stderr.read()[-4000:]}")
    return process.stdout.readline().strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()
