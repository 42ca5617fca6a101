"""Shared fixtures: tiny synthetic volumes and datasets built in memory or under tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset004_Hippocampus"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def hippocampus_raw() -> Path:
    """The real Hippocampus dataset from ../shared/data (skipped with a reason when absent)."""
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        pytest.skip(f"real data not found at {HIPPOCAMPUS}")
    return HIPPOCAMPUS


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def single_torch_thread():
    """Patch-sized torch ops on a busy 2-core machine: extra threads only add contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fp32_on_cpu(monkeypatch):
    """Exact-arithmetic tests: CPU prediction in fp32 even where the CPU would use bf16 autocast."""
    import torch

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})


@pytest.fixture
def mirror_axes_seen(monkeypatch) -> list[tuple[int, ...]]:
    """Records the mirror axes of every sliding-window forward (the real one still runs)."""
    seen: list[tuple[int, ...]] = []
    from nnlite.inference import sliding_window

    real = sliding_window.predict_tiles

    def spy(networks, x, mirror_axes, output, tile_batch):
        seen.append(tuple(mirror_axes))
        return real(networks, x, mirror_axes, output, tile_batch)

    monkeypatch.setattr(sliding_window, "predict_tiles", spy)
    return seen
