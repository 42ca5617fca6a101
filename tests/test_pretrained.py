"""Fine-tuning (training/pretrained.py, planning/moved_plans.py): the transfer rule, the channel
adaptation, refusals, the frozen-encoder warm-up, the settings; end to end (slow): a demo-trained
model fine-tuned into a dataset with other labels and one with another channel count, and
`plan --plans-from`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from tqdm import tqdm

from nnlite.common.errors import UserError
from nnlite.network import build_unet
from nnlite.network.loss import build_loss, deep_supervision_scales, downsample_seg
from nnlite.plans import NetworkPlan
from nnlite.train import build_parser, overrides_from_args
from nnlite.training import checkpoints
from nnlite.training.config import config_to_dict, load_train_config
from nnlite.training.pretrained import (CLASSIFICATION_HEAD, SEGMENTATION_HEADS, adapt_input_channels,
                                        first_convolution, grouped, load_pretrained, plan_transfer,
                                        report_lines, resumed_settings, set_encoder_frozen)
from nnlite.training.run_setup import seed_everything
from nnlite.training.trainer import RunState, train_one_epoch

PLAN = NetworkPlan(strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)), kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
                   features_per_stage=(4, 8, 16))
PLAN_2D = NetworkPlan(strides=((1, 1), (2, 2), (2, 2)), kernel_sizes=((3, 3), (3, 3), (3, 3)),
                      features_per_stage=(4, 8, 16))
PATCH = (4, 16, 16)


def save_network(path: Path, net: nn.Module, labels: dict, case_classes: list[str] = ()) -> Path:
    """A checkpoint with the contract's keys around `net`'s weights (what training writes)."""
    checkpoints.save_checkpoint(path, {
        "network": net.state_dict(), "optimizer": {}, "epoch": 3, "metrics": [], "rng": {},
        "plan": {"dataset_name": "source", "labels": labels, "case_classes": list(case_classes)},
        "config": {"configuration": "3d_fullres"}})
    return path


class Target:
    """What load_pretrained reads of the new dataset's plans."""

    def __init__(self, labels: dict, case_classes: tuple[str, ...] = ()) -> None:
        self.labels, self.regions, self.case_classes = labels, (), case_classes


LESION = {"background": 0, "lesion": 1}
HIPPOCAMPUS = {"background": 0, "Anterior": 1, "Posterior": 2}


# --- the channel adaptation rule -------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2, 5])
def test_first_conv_is_the_mean_over_input_channels_repeated_and_scaled(channels):
    weight = torch.randn(4, 3, 1, 3, 3, dtype=torch.float64)
    adapted = adapt_input_channels(weight, channels)
    assert adapted.shape == (4, channels, 1, 3, 3)
    for j in range(channels):
        assert torch.allclose(adapted[:, j], weight.mean(1) * 3 / channels)
    # the sum over input channels is kept: an input whose channels all show one image gives the
    # pretrained response exactly
    image = torch.randn(1, 1, 4, 8, 8, dtype=torch.float64)
    old = nn.functional.conv3d(image.expand(1, 3, 4, 8, 8), weight, padding=(0, 1, 1))
    new = nn.functional.conv3d(image.expand(1, channels, 4, 8, 8), adapted, padding=(0, 1, 1))
    assert torch.allclose(old, new)


def test_first_convolution_is_the_one_reading_the_input():
    assert first_convolution(build_unet(PLAN, 3, 2)) == "encoder.stages.0.0.conv.weight"
    residual = NetworkPlan(strides=PLAN.strides, kernel_sizes=PLAN.kernel_sizes, features_per_stage=(4, 8, 16),
                           encoder="residual", blocks_per_stage=(1, 1, 1))
    assert first_convolution(build_unet(residual, 3, 2)) == "encoder.stem.conv.weight"


# --- the transfer rule, exactly --------------------------------------------------------------------

def names(net: nn.Module) -> list[str]:
    return list(net.state_dict())


def test_other_labels_reinitialise_the_heads_even_with_equal_shapes(tmp_path):
    source = build_unet(PLAN, 1, 3)
    path = save_network(tmp_path / "source.pt", source, {"background": 0, "a": 1, "b": 2})
    target = build_unet(PLAN, 1, 3)  # the same shapes, other classes
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report, _ = load_pretrained(target, Target(HIPPOCAMPUS), "3d_fullres", path)
    heads = [n for n in names(target) if n.startswith(SEGMENTATION_HEADS)]
    assert report.loaded == [n for n in names(target) if n not in heads]
    assert set(report.initialised) == set(heads) and not report.adapted and not report.not_used
    assert "a, b" in report.initialised[heads[0]] and "Anterior, Posterior" in report.initialised[heads[0]]
    state = target.state_dict()
    assert all(torch.equal(state[n], source.state_dict()[n]) for n in report.loaded)
    assert all(torch.equal(state[n], fresh[n]) for n in heads)  # the fresh initialisation kept


def test_same_classes_load_everything(tmp_path):
    source = build_unet(PLAN, 1, 3)
    path = save_network(tmp_path / "source.pt", source, dict(HIPPOCAMPUS))
    target = build_unet(PLAN, 1, 3)
    report, _ = load_pretrained(target, Target(HIPPOCAMPUS), "3d_fullres", path)
    assert report.loaded == names(target) and not (report.adapted or report.initialised or report.not_used)
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))


def test_other_channels_adapt_the_first_conv_and_its_bias_loads(tmp_path):
    head = replace(PLAN, class_head=2)
    source = build_unet(head, 3, 2)
    path = save_network(tmp_path / "source.pt", source, dict(LESION), ["benign", "malignant"])
    target = build_unet(head, 1, 2)
    report, _ = load_pretrained(target, Target(LESION, ("benign", "malignant")), "3d_fullres", path)
    first = "encoder.stages.0.0.conv.weight"
    assert list(report.adapted) == [first] and not report.initialised and not report.not_used
    assert report.loaded == [n for n in names(target) if n != first]
    expected = source.state_dict()[first].mean(1, keepdim=True) * 3
    assert torch.allclose(target.state_dict()[first], expected)


def test_other_case_classes_reinitialise_the_classification_head(tmp_path):
    head = replace(PLAN, class_head=2)
    path = save_network(tmp_path / "source.pt", build_unet(head, 1, 2), dict(LESION), ["benign", "malignant"])
    with_head = build_unet(head, 1, 2)
    report, _ = load_pretrained(with_head, Target(LESION, ("low", "high")), "3d_fullres", path)
    classifier = [n for n in names(with_head) if n.startswith(CLASSIFICATION_HEAD)]
    assert set(report.initialised) == set(classifier) and len(classifier) == 4
    without = build_unet(PLAN, 1, 2)  # a dataset without case classes: the head is not used
    report, _ = load_pretrained(without, Target(LESION), "3d_fullres", path)
    assert set(report.not_used) == set(classifier) and report.loaded == names(without)
    assert all("case classes differ" in why for why in report.not_used.values())


def test_a_module_loads_whole_or_not_at_all():
    target = {"a.conv.weight": torch.Size([4, 1, 3, 3, 3]), "a.conv.bias": torch.Size([4]),
              "a.norm.weight": torch.Size([4]), "b.weight": torch.Size([2, 4, 1, 1, 1])}
    source = {"a.conv.weight": torch.Size([4, 1, 1, 3, 3]), "a.conv.bias": torch.Size([4]),
              "a.norm.weight": torch.Size([4]), "c.weight": torch.Size([1])}
    report = plan_transfer(target, source, first_conv=None, reinitialised={})
    assert report.loaded == ["a.norm.weight"]
    assert set(report.initialised) == {"a.conv.weight", "a.conv.bias", "b.weight"}  # the bias goes with its kernel
    assert "pretrained (4, 1, 1, 3, 3), here (4, 1, 3, 3, 3)" in report.initialised["a.conv.bias"]
    assert report.initialised["b.weight"] == "not in the pretrained network"
    assert report.not_used == {"c.weight": "not in this network"}
    missing_first = plan_transfer(target, {}, first_conv="a.conv.weight", reinitialised={})
    assert set(missing_first.initialised) == set(target) and not missing_first.loaded


def test_report_is_one_screen_with_exact_counts(tmp_path):
    source = build_unet(replace(PLAN, class_head=2), 3, 2)
    path = save_network(tmp_path / "source.pt", source, dict(LESION), ["benign", "malignant"])
    target = build_unet(PLAN, 1, 3)
    report, described = load_pretrained(target, Target(HIPPOCAMPUS), "3d_fullres", path)
    lines = report_lines(report, described, len(target.state_dict()))
    assert len(lines) <= 24 and all(len(line) <= 110 for line in lines[1:])  # lines[0]: the path
    text = "\n".join(lines)
    n = len(target.state_dict())
    assert f"{n - 4} of this network's {n} tensors taken" in text  # 2 heads × (weight, bias) fresh
    assert f"loaded        {n - 5} tensors: encoder.stages.{{0-2}} (23), decoder.levels.{{0,1}} (20)" in text
    assert "adapted        1 tensor: encoder.stages.0.0.conv.weight: (4, 3, 1, 3, 3) → (4, 1, 1, 3, 3)" in text
    assert "initialised    4 tensors: decoder.heads.{0,1} (4): the output classes differ" in text
    assert "not used       4 pretrained tensors: classifier.mlp.{0,2} (4): the case classes differ" in text
    assert described["sha256"] and described["epoch"] == 3 and described["dataset"] == "source"


def test_grouped_names():
    assert grouped(["encoder.stages.0.0.conv.weight", "encoder.stages.1.0.conv.weight",
                    "encoder.stages.2.0.conv.weight", "decoder.heads.0.weight"]) \
        == "encoder.stages.{0-2} (3), decoder.heads.{0} (1)"
    assert grouped(["classifier.mlp.0.weight"]) == "classifier.mlp.0.weight"
    assert grouped([]) == "-"


# --- refusals ----------------------------------------------------------------------------------------

def test_a_2d_model_into_a_3d_network_is_refused_and_nothing_changes(tmp_path):
    path = save_network(tmp_path / "2d.pt", build_unet(PLAN_2D, 1, 3), dict(HIPPOCAMPUS))
    target = build_unet(PLAN, 1, 3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError, match=r"nothing but the outputs would load into the 3d_fullres network "
                                        r"\(the pretrained kernels are 2D, this network's 3D\)") as error:
        load_pretrained(target, Target(HIPPOCAMPUS), "3d_fullres", path)
    assert error.value.where == str(path)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_another_topology_is_refused(tmp_path):
    other = NetworkPlan(strides=PLAN.strides, kernel_sizes=((3, 3, 3),) * 3, features_per_stage=(6, 12, 24))
    path = save_network(tmp_path / "other.pt", build_unet(other, 1, 3), dict(HIPPOCAMPUS))
    with pytest.raises(UserError, match="another topology .*--plans-from"):
        load_pretrained(build_unet(PLAN, 1, 3), Target(HIPPOCAMPUS), "3d_fullres", path)


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(UserError, match="not an nnlite checkpoint"):
        load_pretrained(build_unet(PLAN, 1, 3), Target(HIPPOCAMPUS), "3d_fullres", path)


# --- the frozen-encoder warm-up ------------------------------------------------------------------------

def fake_batches(seed: int):
    """Endless batches of a bright cube (label 1) in noise, with deep-supervision targets."""
    rng = np.random.default_rng(seed)
    scales = deep_supervision_scales(PLAN)
    while True:
        seg = np.zeros((2, 1, *PATCH), dtype=np.int64)
        seg[:, :, 1:3, 4:12, 4:12] = 1
        data = (rng.normal(size=(2, 1, *PATCH)) + 2.0 * seg).astype(np.float32)
        yield {"data": torch.from_numpy(data), "target": downsample_seg(torch.from_numpy(seg), scales)}


def test_frozen_warmup_leaves_the_encoder_unchanged_for_n_epochs(tmp_path):
    config = load_train_config("debug", ["training.epochs=3", "training.iters_per_epoch=3",
                                         f"pretrained.checkpoint={tmp_path / 'x.pt'}",
                                         "pretrained.frozen_encoder_epochs=2"])
    seed_everything(0, deterministic=True)
    net = build_unet(PLAN, 1, 2)
    net.skip_lowest_head = True
    state = RunState(net, net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.99, nesterov=True,
                                               weight_decay=3e-5), None, None, torch.device("cpu"), 0, [])
    loss_fn, batches = build_loss(PLAN, batch_dice=True), fake_batches(0)

    def snapshot(module: nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in module.parameters()]

    encoder, decoder = snapshot(net.encoder), snapshot(net.decoder)
    for epoch in range(3):
        set_encoder_frozen(net, config, epoch)
        train_one_epoch(state, loss_fn, batches, config, epoch, tqdm(disable=True))
        same = all(torch.equal(a, b) for a, b in zip(encoder, snapshot(net.encoder)))
        assert same == (epoch < 2), f"epoch {epoch + 1}: encoder {'unchanged' if same else 'changed'}"
        assert not all(torch.equal(a, b) for a, b in zip(decoder, snapshot(net.decoder)))
        decoder = snapshot(net.decoder)


# --- settings ------------------------------------------------------------------------------------------

def test_pretrained_flag_becomes_an_absolute_path_setting(tmp_path):
    path = tmp_path / "run #1" / "checkpoint_final.pt"  # '#' would start a YAML comment unquoted
    args = build_parser().parse_args(["work", "--pretrained", str(path)])
    config = load_train_config("default", overrides_from_args(args))
    assert config.pretrained.checkpoint == str(path.resolve())


def test_unused_pretrained_settings_are_not_written_and_a_warmup_needs_a_checkpoint():
    assert "pretrained" not in config_to_dict(load_train_config("default"))
    with pytest.raises(UserError, match="--set pretrained.frozen_encoder_epochs=2"):
        load_train_config("default", ["pretrained.frozen_encoder_epochs=2"])


def test_a_resume_without_pretrained_settings_keeps_the_checkpoints():
    saved = load_train_config("default", ["pretrained.checkpoint=/a.pt", "pretrained.frozen_encoder_epochs=1"])
    assert resumed_settings(load_train_config("default"), saved).pretrained == saved.pretrained
    other = load_train_config("default", ["pretrained.checkpoint=/b.pt"])
    assert resumed_settings(other, saved).pretrained == other.pretrained  # given ones are compared as usual


def test_no_pretrained_setting_means_no_transfer_and_no_freezing(tmp_path, caplog):
    from nnlite.training.pretrained import start_from_pretrained

    net = build_unet(PLAN, 1, 2)
    config = load_train_config("debug")
    with caplog.at_level(logging.INFO, logger="nnlite"):
        assert start_from_pretrained(net, None, config, tmp_path, resumed=False) is None
        set_encoder_frozen(net, config, 0)
    assert all(p.requires_grad for p in net.parameters()) and not list(tmp_path.iterdir())


# --- plan --plans-from, without a dataset -----------------------------------------------------------------

def new_fingerprint():
    from nnlite.plans import CaseFingerprint, Fingerprint, IntensityStats

    stats = IntensityStats(100.0, 20.0, 100.0, 0.0, 200.0, 10.0, 190.0)
    cases = tuple(CaseFingerprint(f"c{i}", (2.0, 1.0, 1.0), (20, 40, 30), (10 + i, 40, 30)) for i in range(3))
    return Fingerprint(cases=cases, intensity_per_channel={"0": stats, "1": stats},
                       channel_names={"0": "CT", "1": "T2"}, labels={"background": 0, "liver": 1},
                       median_relative_size_after_crop=0.5)


def test_moved_plans_copy_the_network_and_take_the_data_from_the_new_dataset(tmp_path):
    from nnlite.planning.moved_plans import PLANS_FROM_KEY, moved_plans
    from tests.loader_fixtures import toy_plans

    source = toy_plans(patch=(8, 12, 12), batch_size=3)
    config = source.configurations["3d_fullres"]
    source = replace(source, configurations={"3d_fullres": replace(
        config, network=replace(config.network, class_head=2), inference_mirror_axes=(1, 2))})
    plans = moved_plans(source, new_fingerprint(), "Liver", tmp_path / "old")
    old, new = source.configurations["3d_fullres"], plans.configurations["3d_fullres"]
    assert (new.spacing, new.patch_size, new.batch_size, new.data_identifier) == \
        (old.spacing, old.patch_size, old.batch_size, old.data_identifier)
    assert new.network == replace(old.network, class_head=0)  # the head is planned for the new classes
    assert new.normalization == ("ct", "zscore") and new.use_mask_for_norm == (False, True)
    assert new.median_shape == (22, 40, 30) and new.inference_mirror_axes is None  # 11 slices × 2 mm / 1 mm
    assert plans.transpose == source.transpose and plans.labels == {"background": 0, "liver": 1}
    assert plans.channel_names == {"0": "CT", "1": "T2"} and plans.dataset_name == "Liver"
    assert plans.extra[PLANS_FROM_KEY] == str((tmp_path / "old").resolve())


def test_plans_from_refuses_a_missing_configuration_and_planner_options(tmp_path, capsys):
    from nnlite.plan import main as plan_main
    from nnlite.planning.moved_plans import moved_plans
    from tests.loader_fixtures import toy_plans

    with pytest.raises(UserError, match="'2d' is not planned in .*planned: 3d_fullres"):
        moved_plans(toy_plans(), new_fingerprint(), "x", tmp_path, ["2d"])
    with pytest.raises(SystemExit) as exit_info:
        plan_main([str(tmp_path / "raw"), str(tmp_path / "work"), "--plans-from", str(tmp_path), "--preset",
                   "resenc-m"])
    assert exit_info.value.code == 2 and "--plans-from copies SOURCE_WORK's plan" in capsys.readouterr().err


# --- end to end on demo data (slow): a demo-trained model fine-tuned elsewhere -------------------------

DEMO_PATCH = (8, 32, 32)  # divisible by the demo plan's total stride (4, 16, 16)
QUICK = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--device", "cpu", "--seed", "0",
         "--workers", "0", "--train-config", "debug", "--set", "validation.enabled=false"]


def few_samples(monkeypatch_context) -> None:
    from nnlite.planning import fingerprint as fingerprint_module
    from tests.work_fixtures import FEW_SAMPLES

    monkeypatch_context.setattr(fingerprint_module, "FOREGROUND_SAMPLES_TOTAL", FEW_SAMPLES)


@pytest.fixture(scope="module")
def demo_source(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-case demo WORK (3 channels, label 'tumor', case classes) trained for 2 iterations:
    (WORK, its checkpoint_final.pt)."""
    from nnlite.data.demo_dataset import generate_demo_dataset
    from nnlite.plans import load_plans, save_plans
    from nnlite.preprocessing.runner import run_preprocessing
    from nnlite.train import main as train_main
    from nnlite.training.demo_run import DEMO_CONFIGURATION, plan_demo

    root = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as patch:
        few_samples(patch)
        plans = plan_demo(generate_demo_dataset(root / "raw", n_cases=3), root / "source")
    config = plans.configurations[DEMO_CONFIGURATION]
    save_plans(replace(load_plans(root / "source" / "plans.json"),
                       configurations={DEMO_CONFIGURATION: replace(config, patch_size=DEMO_PATCH)}),
               root / "source" / "plans.json")
    run_preprocessing(root / "source", [DEMO_CONFIGURATION], workers=1)
    assert train_main([str(root / "source"), *QUICK]) == 0
    return root / "source", root / "source" / "results" / DEMO_CONFIGURATION / "fold_0" / checkpoints.FINAL


def one_channel_demo(raw: Path, target: Path, channel_name: str) -> Path:
    """The demo's post-contrast channel alone, renamed `channel_name` (labels and classes kept)."""
    shutil.copytree(raw, target)
    for path in sorted((target / "imagesTr").glob("*.nii.gz")):
        case, channel = path.name[: -len(".nii.gz")].rsplit("_", 1)
        if channel == "0001":
            path.rename(target / "imagesTr" / f"{case}_0000.tmp")
        else:
            path.unlink()
    for path in (target / "imagesTr").glob("*.tmp"):
        path.rename(path.with_suffix(".nii.gz"))
    meta = json.loads((target / "dataset.json").read_text())
    (target / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": channel_name}}))
    return target


def fine_tune(source: Path, raw: Path, work: Path, checkpoint: Path, *extra: str) -> Path:
    """plan --plans-from source, preprocess, train --pretrained, predict one case; returns the fold."""
    from nnlite.common.cli import run
    from nnlite.plan import main as plan_main
    from nnlite.predict import main as predict_main
    from nnlite.preprocess import main as preprocess_main
    from nnlite.train import main as train_main

    with pytest.MonkeyPatch.context() as patch:
        few_samples(patch)
        assert run(plan_main, [str(raw), str(work), "--plans-from", str(source), "--workers", "1"]) == 0
    assert run(preprocess_main, [str(work), "--workers", "1"]) == 0
    assert run(train_main, [str(work), *QUICK, "--pretrained", str(checkpoint), *extra]) == 0
    images = work.parent / f"{work.name}_input"
    images.mkdir()
    first = sorted((raw / "imagesTr").glob("*.nii.gz"))[0].name.rsplit("_", 1)[0]
    for path in (raw / "imagesTr").glob(f"{first}_*.nii.gz"):
        (images / path.name).symlink_to(path)
    assert run(predict_main, [str(work), str(images), str(work.parent / f"{work.name}_out"), "--folds", "0",
                              "--no-mirroring", "--device", "cpu"]) == 0
    assert (work.parent / f"{work.name}_out" / f"{first}.nii.gz").is_file()
    return work / "results" / "3d_fullres" / "fold_0"


def network_names(work: Path) -> list[str]:
    from nnlite.network import build_network
    from nnlite.plans import load_plans

    return list(build_network(load_plans(work / "plans.json"), "3d_fullres").state_dict())


@pytest.mark.slow
def test_demo_model_fine_tunes_into_other_labels_with_an_exact_report(demo_source, tmp_path):
    from nnlite.data.demo_dataset import generate_demo_dataset

    source, checkpoint = demo_source
    raw = generate_demo_dataset(tmp_path / "raw", n_cases=3, regions=True)  # regions lesion, core
    fold = fine_tune(source, raw, tmp_path / "work", checkpoint)
    record = json.loads((fold / "pretrained.json").read_text())
    names = network_names(tmp_path / "work")
    heads = [n for n in names if n.startswith(SEGMENTATION_HEADS)]
    assert record["checkpoint"] == str(checkpoint.resolve()) and record["epoch"] == 1
    assert record["loaded"] == [n for n in names if n not in heads] and record["adapted"] == {}
    assert sorted(record["initialised"]) == sorted(heads) and len(heads) == 8
    assert set(record["initialised"].values()) == {
        "the output classes differ (pretrained: background, tumor; here: lesion, core)"}
    source_names = list(torch.load(checkpoint, weights_only=True)["network"])
    assert sorted(record["not_used"]) == sorted(n for n in source_names if n.startswith(CLASSIFICATION_HEAD))
    log = (fold / "log.txt").read_text()
    assert f"loaded        {len(names) - 8} tensors" in log and "initialised    8 tensors" in log
    config = json.loads((fold / "config.json").read_text())
    assert config["pretrained"]["checkpoint"] == str(checkpoint.resolve())


@pytest.mark.slow
def test_demo_model_fine_tunes_into_another_channel_count_planned_from_its_work(demo_source, tmp_path):
    from nnlite.plans import load_plans

    source, checkpoint = demo_source
    raw = one_channel_demo(source.parent / "raw", tmp_path / "raw", "CT")
    fold = fine_tune(source, raw, tmp_path / "work", checkpoint, "--set", "pretrained.frozen_encoder_epochs=1")
    # plan --plans-from: the source's spacing, patch, batch and topology; this dataset's channels
    old, new = load_plans(source / "plans.json"), load_plans(tmp_path / "work" / "plans.json")
    a, b = old.configurations["3d_fullres"], new.configurations["3d_fullres"]
    assert (a.spacing, a.patch_size, a.batch_size, a.network) == (b.spacing, b.patch_size, b.batch_size, b.network)
    assert new.transpose == old.transpose and new.case_classes == old.case_classes
    assert new.channel_names == {"0": "CT"} and b.normalization == ("ct",) and old.num_channels == 3
    assert new.extra["plans_from"] == str(source.resolve())
    # the transfer: everything loads, the first convolution is adapted from 3 channels to 1
    record = json.loads((fold / "pretrained.json").read_text())
    names = network_names(tmp_path / "work")
    first = "encoder.stages.0.0.conv.weight"
    assert list(record["adapted"]) == [first] and "the mean over 3 input channels" in record["adapted"][first]
    assert record["loaded"] == [n for n in names if n != first]
    assert record["initialised"] == {} and record["not_used"] == {}
    log = (fold / "log.txt").read_text()
    assert "adapted        1 tensor: encoder.stages.0.0.conv.weight: (8, 3, 1, 3, 3) → (8, 1, 1, 3, 3)" in log
    assert "encoder frozen for epochs 1-1 (warm-up)" in log


@pytest.mark.slow
def test_a_2d_model_is_refused_by_train_in_one_line(demo_source, tmp_path, capsys):
    from nnlite.common.cli import run
    from nnlite.train import main as train_main

    source, _ = demo_source
    path = save_network(tmp_path / "2d.pt", build_unet(PLAN_2D, 3, 2), {"background": 0, "tumor": 1})
    work = tmp_path / "work"
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("results"))
    capsys.readouterr()
    assert run(train_main, [str(work), *QUICK, "--pretrained", str(path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path.resolve()}: nothing but the outputs would load into the 3d_fullres network "
                      "(the pretrained kernels are 2D, this network's 3D)"]
    assert not (work / "results" / "3d_fullres" / "fold_0").exists()  # nothing half-made
