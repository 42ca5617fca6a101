"""The case-level classification head: classes, head, loss, tile aggregation, splits, CLI outputs."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nnlite.common.errors import UserError
from nnlite.data.case_classes import CLASSES_FILE, CaseClasses, load_case_classes
from nnlite.inference.case_classification import (ClassCollector, aggregate_tiles, format_classification,
                                                  read_classification)
from nnlite.inference.sliding_window import predict_sliding_window
from nnlite.network import build_unet
from nnlite.network.classifier import (ClassificationHead, ClassTargets, SegmentAndClass, balanced_class_weights,
                                       class_loss, joint_loss, lesion_pooled)
from nnlite.network.loss import build_loss
from nnlite.planning.splits import make_stratified_splits
from nnlite.plans import NetworkPlan
from nnlite.training.trainer import RunState, train_step

PLAN_3D = dict(strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)), kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
               features_per_stage=(4, 8, 16))
PLAN_2D = dict(strides=((1, 1), (2, 2), (2, 2)), kernel_sizes=((3, 3), (3, 3), (3, 3)),
               features_per_stage=(4, 8, 16))


# --- case classes -----------------------------------------------------------------------------

def _raw(tmp_path: Path, rows: str, names=("benign", "malignant")) -> tuple[Path, dict]:
    (tmp_path / CLASSES_FILE).write_text(rows)
    return tmp_path, {"classes": list(names)}


def test_classes_are_read_by_name_in_declared_order(tmp_path):
    root, meta = _raw(tmp_path, "case,class\na,malignant\nb,benign\n\nc,malignant\n")
    classes = load_case_classes(root, meta, ["a", "b", "c"])
    assert classes == CaseClasses(("benign", "malignant"), {"a": 1, "b": 0, "c": 1})
    assert classes.counts(["a", "b", "c"]) == [1, 2]


def test_no_classes_key_means_no_classes(tmp_path):
    assert load_case_classes(tmp_path, {}, ["a"]) is None


@pytest.mark.parametrize("rows, names, match", [
    ("case,class\na,benign\nb,cancer\n", ("benign", "malignant"), "line 3: unknown class 'cancer'"),
    ("case,class\na,benign\n", ("benign", "malignant"), "case 'b' has no class"),
    ("case,class\na,benign\nb,benign\n", ("benign", "malignant"), "every case is of class 'benign'"),
    ("case,class\na,benign\nb,malignant\nz,benign\n", ("benign", "malignant"), "names case 'z'"),
    ("case,class\na,benign\na,malignant\n", ("benign", "malignant"), "line 3: case 'a' is listed twice"),
    ("name,label\na,benign\n", ("benign", "malignant"), "line 1: the header"),
    ("case,class\na,benign\n", ("benign",), "at least 2 classes"),
    ("case,class\na,benign\n", ("benign", "benign"), "names a class twice"),
])
def test_class_errors_name_the_problem(tmp_path, rows, names, match):
    root, meta = _raw(tmp_path, rows, names)
    with pytest.raises(UserError, match=match):
        load_case_classes(root, meta, ["a", "b"])


def test_a_missing_classes_file_is_an_error(tmp_path):
    with pytest.raises(UserError, match="classes.csv: file not found"):
        load_case_classes(tmp_path, {"classes": ["x", "y"]}, ["a"])


# --- the head -----------------------------------------------------------------------------------

@pytest.mark.parametrize("plan, shape", [(PLAN_3D, (2, 3, 8, 16, 16)), (PLAN_2D, (2, 3, 16, 16))])
@pytest.mark.parametrize("k", [2, 4])
def test_head_gives_k_logits_per_sample_for_2d_and_3d(plan, shape, k):
    net = build_unet(NetworkPlan(**plan, class_head=k), 3, 2)
    out = net(torch.randn(shape))
    assert isinstance(out, SegmentAndClass) and out.class_logits.shape == (2, k)
    assert [s.shape[2:] for s in out.seg] == [shape[2:], tuple(n // 2 for n in shape[2:])] or plan is PLAN_3D
    net.deep_supervision = False
    assert net(torch.randn(shape)).seg.shape == (2, 2, *shape[2:])


def test_head_off_network_is_unchanged():
    torch.manual_seed(0)
    off = build_unet(NetworkPlan(**PLAN_3D), 3, 2)
    assert off.classifier is None and not any(k.startswith("classifier") for k in off.state_dict())
    assert isinstance(off(torch.randn(1, 3, 8, 16, 16)), list)


def test_head_pools_the_features_under_the_predicted_foreground():
    features = torch.zeros(1, 2, 2, 4, 4)
    features[0, :, 1, 2:, 2:] = torch.tensor([3.0, -1.0])[:, None, None]  # the lesion's cells
    foreground = torch.zeros(1, 1, 4, 8, 8)
    foreground[0, 0, 2:, 4:, 4:] = 1.0  # predicted lesion: exactly those cells at full resolution
    assert torch.allclose(lesion_pooled(features, foreground), torch.tensor([[3.0, -1.0]]), atol=1e-3)
    assert torch.allclose(lesion_pooled(features, torch.zeros_like(foreground)), torch.zeros(1, 2))


def test_head_reads_foreground_from_softmax_or_region_sigmoids():
    logits = torch.tensor([2.0, 0.0, -1.0]).view(1, 3, 1, 1)
    label_head = ClassificationHead((4, 8), 2)
    region_head = ClassificationHead((4, 8), 2, region_outputs=True)
    p = torch.softmax(logits, 1)
    assert torch.allclose(label_head.foreground(logits), 1 - p[:, :1])
    assert torch.allclose(region_head.foreground(logits), torch.sigmoid(logits).amax(1, keepdim=True))


def test_head_starts_at_the_class_prior_and_pools_the_deepest_stages():
    net = build_unet(NetworkPlan(**PLAN_3D, class_head=3), 3, 2)
    assert torch.equal(net(torch.randn(2, 3, 8, 16, 16)).class_logits, torch.zeros(2, 3))
    assert net.classifier.mlp[0].in_features == 4 + 8 + 16  # every stage of a 3-stage network


def test_class_loss_never_moves_the_segmentation_head():
    """The foreground weights are detached: the class loss reaches the encoder and the head only."""
    net = build_unet(NetworkPlan(**PLAN_3D, class_head=2), 3, 2)
    nn.init.normal_(net.classifier.mlp[-1].weight)  # a head that has learned something
    class_loss(net(torch.randn(2, 3, 8, 16, 16)).class_logits, torch.tensor([0, 1]), torch.ones(2)).backward()
    assert all(p.grad is None for p in net.decoder.parameters())
    assert all(p.grad is not None for p in net.encoder.parameters())


# Three SGD steps of a seeded head-off network, recorded with nnlite before the classification head
# existed (commit f842983). Another machine's float32 kernels may sum in another order (one thread
# instead of several moved the weight sum by 2e-11 relative), so the recorded numbers are compared to
# RECORDED_REL; a change to the loss, the network or the step moves them by far more.
RECORDED_LOSSES = (0.45744240283966064, 0.44837912917137146, 0.46424633264541626)
RECORDED_WEIGHT_SUM = 1577.8131096112422
RECORDED_REL = 1e-6


def test_head_off_seeded_training_is_bit_identical_to_before_the_head():
    """With the head off, training is what it was before the head: the recorded losses and weights
    (to RECORDED_REL), and within this process each step's loss is bit for bit the segmentation
    loss of the same network on the same batch (same operations on the same machine: exact)."""
    torch.manual_seed(0)
    plan = NetworkPlan(**PLAN_3D)
    net = build_unet(plan, 2, 2)
    net.skip_lowest_head = True
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    state = RunState(net, net, opt, None, None, torch.device("cpu"), 0, [])
    loss_fn = build_loss(plan, batch_dice=False)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(3):
        data = torch.randn(2, 2, 8, 16, 16, generator=g)
        seg = (data[:, :1] > 0.5).long()
        batch = {"data": data, "target": [seg, seg[:, :, :, ::2, ::2]], "cases": ["a", "b"]}
        with torch.no_grad():
            segmentation_only = float(loss_fn(net(data), batch["target"]))
        losses.append(float(train_step(state, loss_fn, batch, 12.0)))
        assert losses[-1] == segmentation_only
    assert losses == pytest.approx(RECORDED_LOSSES, rel=RECORDED_REL)
    with torch.no_grad():
        weight_sum = sum(float(p.double().abs().sum()) for p in net.parameters())
    assert weight_sum == pytest.approx(RECORDED_WEIGHT_SUM, rel=RECORDED_REL)


# --- the loss -----------------------------------------------------------------------------------

def test_balanced_weights_make_each_class_count_equally():
    # 80/20 training cases: w = N / (K · n_k) = 100 / (2 · 80), 100 / (2 · 20)
    assert torch.allclose(balanced_class_weights([80, 20]), torch.tensor([0.625, 2.5]))
    # a class without training cases: weight 1; the two present classes share N = 40 between them
    w = balanced_class_weights([30, 10, 0])
    assert torch.allclose(w, torch.tensor([40 / (2 * 30), 40 / (2 * 10), 1.0]))
    assert float(w[0] * 30) == pytest.approx(float(w[1] * 10))  # equal total weight per class
    assert float(w[0] * 30 + w[1] * 10) / 40 == pytest.approx(1.0)  # mean weight over the training cases


# logits [2, −1]: CE = ln(1 + e^−3) for class 0, 3 + ln(1 + e^−3) for class 1; logits [½, ½]: ln 2
CE_CONFIDENT_0 = math.log(1 + math.exp(-3))
CE_CONFIDENT_1 = 3 + math.log(1 + math.exp(-3))


@pytest.mark.parametrize("logits, target, expected", [
    # batch 1, the rare class: its weight 2.5 times its CE (the old weighted mean gave the CE alone)
    ([[2.0, -1.0]], [1], 2.5 * CE_CONFIDENT_1),
    ([[2.0, -1.0]], [0], 0.625 * CE_CONFIDENT_0),  # batch 1, the common class
    # batch 2: the weighted CEs summed over 2 samples (not over the summed weights 3.125)
    ([[2.0, -1.0], [0.5, 0.5]], [1, 0], (2.5 * CE_CONFIDENT_1 + 0.625 * math.log(2)) / 2),
])
def test_class_loss_worked_example_80_20(logits, target, expected):
    weights = torch.tensor([0.625, 2.5])  # balanced weights of an 80/20 training set (above)
    assert float(class_loss(torch.tensor(logits), torch.tensor(target), weights)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_each_class_carries_half_of_the_weight_over_an_epoch(batch):
    """Cases drawn uniformly from an 80/20 training set, every possible batch enumerated with its
    probability. Each sample's weight in the loss is read from the gradient: at zero logits (K = 2)
    ∂loss/∂logit is c_i · (½ − onehot), so c_i = 2 |∂loss/∂logit_i0|. Expected total per class:
    ½ and ½ at every batch size (batch 1 is also a DDP rank's share; DDP averages the ranks'
    gradients). The mean by summed weights gave 80/20 at batch 1 and ~70/30 at batch 2."""
    weights = balanced_class_weights([80, 20])
    share = [0.0, 0.0]
    for classes in itertools.product([0, 1], repeat=batch):
        probability = math.prod(0.8 if k == 0 else 0.2 for k in classes)
        logits = torch.zeros(batch, 2, requires_grad=True)
        class_loss(logits, torch.tensor(classes), weights).backward()
        for k, grad in zip(classes, logits.grad[:, 0]):
            share[k] += probability * 2 * abs(float(grad))
    assert share == pytest.approx([0.5, 0.5], abs=1e-6)


def test_a_class_without_training_cases_gives_a_finite_loss():
    """A validation batch of a class no training case holds (the third: counts 30, 10, 0): its
    weight is 1, so the loss is its plain CE, neither NaN (0/0 of a weighted mean) nor inf."""
    weights = balanced_class_weights([30, 10, 0])
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    loss = class_loss(logits, torch.tensor([2, 2]), weights)
    ce = [math.log(math.e + 2) - 0, math.log(2 + math.e ** 2) - 2]  # ln Σ e^z − z_2 per sample
    assert math.isfinite(float(loss)) and float(loss) == pytest.approx(sum(ce) / 2, rel=1e-6)


def test_joint_loss_adds_the_weighted_class_loss():
    seg_loss = build_loss(NetworkPlan(**PLAN_3D), batch_dice=False)
    torch.manual_seed(0)
    seg = [torch.randn(2, 2, 8, 16, 16), torch.randn(2, 2, 8, 8, 8)]
    targets = [(torch.rand(2, 1, 8, 16, 16) > 0.5).long(), (torch.rand(2, 1, 8, 8, 8) > 0.5).long()]
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    weights = torch.tensor([0.5, 2.0])
    classes = ClassTargets({"a": 1, "b": 0}, weights, 0.7)
    total = joint_loss(seg_loss, SegmentAndClass(seg, logits), targets, ["a", "b"], classes)
    by_hand = (2.0 * CE_CONFIDENT_1 + 0.5 * math.log(2)) / 2  # each sample's weighted CE, mean over 2
    assert float(total) == pytest.approx(float(seg_loss(seg, targets)) + 0.7 * by_hand, rel=1e-6)
    assert float(class_loss(logits, torch.tensor([1, 0]), weights)) == pytest.approx(by_hand, rel=1e-6)
    # head off: the same operations as the segmentation loss alone, in this process (exact)
    assert torch.equal(joint_loss(seg_loss, seg, targets, ["a", "b"], None), seg_loss(seg, targets))
    parts = {}
    joint_loss(seg_loss, SegmentAndClass(seg, logits), targets, ["a", "b"], classes, parts)
    assert float(parts["class"]) == pytest.approx(by_hand, rel=1e-6)  # logged per epoch as class_loss
    # DistributedDataParallel hands the output back as a plain tuple: the same loss (same operations)
    assert torch.equal(joint_loss(seg_loss, (seg, logits), targets, ["a", "b"], classes), total)


# --- tile aggregation ---------------------------------------------------------------------------

def test_foreground_weighting_by_hand():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    foreground = np.array([0.0, 30.0, 10.0])
    expected = (probs * (foreground + 1e-3)[:, None]).sum(0) / (foreground + 1e-3).sum()
    assert np.allclose(aggregate_tiles(probs, foreground), expected)
    assert np.allclose(aggregate_tiles(probs, foreground, "mean"), probs.mean(0))
    assert np.allclose(aggregate_tiles(probs[:1], foreground[:1]), probs[0])  # an empty case: plain mean


class _FixedHead(torch.nn.Module):
    """Segmentation: foreground everywhere the input's channel 0 is > 0; class logits: the mean
    of channel 0 and its negation — so tiles with foreground say 'class 1'."""

    def __init__(self):
        super().__init__()
        self.classifier = ClassificationHead((4, 8), 2)  # only its foreground rule is used

    def forward(self, x):
        fg = (x[:, :1] > 0).float() * 20 - 10
        mean = x[:, 0].flatten(1).mean(1)
        return SegmentAndClass(torch.cat([-fg, fg], 1), torch.stack([-mean, mean], 1))


def test_collector_weights_tiles_by_their_predicted_foreground():
    data = -torch.ones(1, 4, 16, 16)
    data[0, :, :8, :8] = 5.0  # a lesion in one corner: one of four tiles holds it
    head = _FixedHead()
    with ClassCollector([head]) as collector:
        predict_sliding_window(head, data, (4, 8, 8), step=1.0, mirror_axes=(1, 2))
    fg, mean = collector.case_probabilities("foreground"), collector.case_probabilities("mean")
    assert fg[1] > 0.99  # the lesion's tile decides
    assert mean[1] < fg[1] and mean[1] == pytest.approx((3 * (1 / (1 + np.e ** 2)) + 1) / 4, rel=1e-4)
    assert len(collector._probs) and all(p.shape[1] == 2 for p in collector._probs)


def test_each_case_gets_only_its_own_tiles_class_probabilities():
    """The predictor's class observers start every case empty, also after a case whose prediction
    failed half-way (its tiles are recorded but it has no row)."""
    from nnlite.inference.predictor import CaseInput, CasePredictor, PredictOptions, StageModel
    from tests.inference_fixtures import CONFIG, tiny_plans

    head, plans = _FixedHead(), tiny_plans(patch=(4, 8, 8))
    benign, malignant = -torch.ones(1, 4, 16, 16), torch.full((1, 4, 16, 16), 5.0)
    options = PredictOptions(config=CONFIG, mirror=False)
    with CasePredictor([StageModel(CONFIG, [head])], plans, options, torch.device("cpu")) as predict:
        alone = predict("b", CaseInput({CONFIG: (benign, None)})).class_probs
        head(malignant[None, :, :4, :8, :8])  # a failed case's tile, observed, never aggregated
        after_failure = predict("b", CaseInput({CONFIG: (benign, None)})).class_probs
    assert alone[0] > 0.5 and np.array_equal(after_failure, alone)


def test_collector_ignores_networks_without_a_head():
    net = build_unet(NetworkPlan(**PLAN_3D), 1, 2, deep_supervision=False).eval()
    with ClassCollector([net]) as collector:
        predict_sliding_window(net, torch.randn(1, 8, 16, 16), (8, 16, 16))
    assert not collector.has_head and not collector._probs


def test_classification_csv_round_trip(tmp_path):
    rows = {"b": np.array([0.25, 0.75]), "a": np.array([0.6, 0.4])}
    text = format_classification(rows, ["benign", "malignant"])
    assert text.splitlines() == ["case,predicted_class,p_benign,p_malignant",
                                 "a,benign,0.600000,0.400000", "b,malignant,0.250000,0.750000"]
    (tmp_path / "c.csv").write_text(text)
    back = read_classification(tmp_path / "c.csv", ["benign", "malignant"])
    assert back.keys() == rows.keys() and all(np.allclose(back[k], rows[k]) for k in rows)


# --- stratified splits --------------------------------------------------------------------------

def test_stratified_folds_hold_every_class_and_balanced_sizes():
    names = [f"c{i:02d}" for i in range(23)]
    class_of = {n: (0 if i < 15 else 1) for i, n in enumerate(names)}  # 15 vs 8: unbalanced
    splits = make_stratified_splits(names, class_of, 5)
    assert splits == make_stratified_splits(list(reversed(names)), class_of, 5)  # deterministic
    assert sorted(n for s in splits for n in s["val"]) == names
    assert {len(s["val"]) for s in splits} <= {4, 5}
    for split in splits:
        assert {class_of[n] for n in split["val"]} == {0, 1}
        assert not set(split["train"]) & set(split["val"])


# --- end to end (slow): plan, train with the head, resume, predict, evaluate, visualize ----------

TINY_PATCH = (8, 32, 32)  # divisible by the demo plan's total stride
SCHEDULE = ["--device", "cpu", "--seed", "0", "--workers", "0", "--train-config", "debug",
            "--iters-per-epoch", "3", "--val-iters", "1", "--set", "validation.mirroring=false"]


@pytest.fixture(scope="module")
def classed_work(tmp_path_factory) -> Path:
    """A preprocessed 6-case demo (3 benign, 3 malignant) planned like the demo, tiny patch."""
    from dataclasses import replace

    from nnlite.data.demo_dataset import generate_demo_dataset
    from nnlite.plans import save_plans
    from nnlite.preprocessing.runner import run_preprocessing
    from nnlite.training.demo_run import DEMO_CONFIGURATION, plan_demo

    root = tmp_path_factory.mktemp("classed")
    raw = generate_demo_dataset(root / "raw", n_cases=6)
    plans = plan_demo(raw, root / "work")
    config = plans.configurations[DEMO_CONFIGURATION]
    save_plans(replace(plans, configurations={DEMO_CONFIGURATION: replace(config, patch_size=TINY_PATCH)}),
               root / "work" / "plans.json")
    run_preprocessing(root / "work", [DEMO_CONFIGURATION], workers=1)
    return root / "work"


@pytest.mark.slow
def test_plan_switches_the_head_on_and_stratifies(classed_work):
    from nnlite.plans import load_plans

    plans = load_plans(classed_work / "plans.json")
    assert plans.case_classes == ("benign", "malignant")
    assert plans.configurations["3d_fullres"].network.class_head == 2
    classes = dict(line.split(",") for line in (classed_work / CLASSES_FILE).read_text().split()[1:])
    splits = json.loads((classed_work / "splits.json").read_text())
    for name in ("benign", "malignant"):  # 3 cases of each over 5 folds: spread, never two together
        per_fold = [sum(classes[c] == name for c in split["val"]) for split in splits]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == 3


@pytest.mark.slow
def test_head_trains_resumes_exactly_and_predicts_classes(classed_work, tmp_path, capsys, monkeypatch):
    import shutil

    from nnlite.training import trainer

    from nnlite.evaluate import main as evaluate_main
    from nnlite.predict import main as predict_main
    from nnlite.train import main as train_main
    from nnlite.visualize import main as visualize_main

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for work in (straight, resumed):
        shutil.copytree(classed_work, work)
    assert train_main([str(straight), "--epochs", "2", *SCHEDULE]) == 0
    one_epoch = trainer.train_one_epoch

    def crash_in_second_epoch(state, loss_fn, batches, config, epoch, bar):
        if epoch == 1:
            raise RuntimeError("crash after the first checkpoint")
        return one_epoch(state, loss_fn, batches, config, epoch, bar)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "train_one_epoch", crash_in_second_epoch)
        with pytest.raises(RuntimeError, match="crash"):
            train_main([str(resumed), "--epochs", "2", *SCHEDULE])
    assert train_main([str(resumed), "--epochs", "2", *SCHEDULE, "--resume"]) == 0
    fold = "results/3d_fullres/fold_0"
    a = torch.load(straight / fold / "checkpoint_final.pt", weights_only=True)["network"]
    b = torch.load(resumed / fold / "checkpoint_final.pt", weights_only=True)["network"]
    assert any(k.startswith("classifier.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    metrics = [json.loads(line) for line in (straight / fold / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(0 < m["class_loss"] < 10 for m in metrics)
    validation = straight / fold / "validation"
    scores = json.loads((validation / "summary.json").read_text())["classification"]
    val_cases = json.loads((straight / "splits.json").read_text())[0]["val"]
    assert sorted(scores["per_case"]) == val_cases and scores["classes"] == ["benign", "malignant"]
    assert (validation / "classification.csv").read_text().startswith("case,predicted_class,p_benign")

    raw = Path(json.loads((straight / "plans.json").read_text())["extra"]["raw_path"])
    images = tmp_path / "images"
    images.mkdir()
    for case in val_cases:
        for f in (raw / "imagesTr").glob(f"{case}_*.nii.gz"):
            shutil.copy(f, images / f.name)
    out = tmp_path / "pred"
    assert predict_main([str(straight), str(images), str(out), "--folds", "0", "--device", "cpu",
                         "--no-mirroring"]) == 0
    predicted = read_classification(out / "classification.csv", ["benign", "malignant"])
    assert sorted(predicted) == val_cases
    from nnlite.inference.options import PredictOptions
    from nnlite.inference.predictor import predict_models

    staged = tmp_path / "pred_best_path"  # the path of predict --best, cascades and ensembles
    predict_models(straight, images, staged, ["3d_fullres"], PredictOptions(folds=("0",), device="cpu", mirror=False))
    via_stages = read_classification(staged / "classification.csv", ["benign", "malignant"])
    assert all(np.allclose(via_stages[c], predicted[c], atol=1e-5) for c in val_cases)
    assert evaluate_main([str(out), str(raw / "labelsTr"), "--dataset-json", str(raw / "dataset.json")]) == 0
    assert "classification: AUC" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classification"]["num_cases"] == len(val_cases)
    assert visualize_main([str(images), str(raw / "labelsTr"), str(out), str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "roc.png").stat().st_size > 1000


def test_the_head_leaves_every_other_initial_weight_as_without_it():
    torch.manual_seed(3)
    off = build_unet(NetworkPlan(**PLAN_3D), 3, 2).state_dict()
    torch.manual_seed(3)
    on = build_unet(NetworkPlan(**PLAN_3D, class_head=2), 3, 2).state_dict()
    assert all(torch.equal(off[k], on[k]) for k in off)
