"""Networks by import path (docs/architectures.md, "Your own network"): a builder in a module outside
nnlite, named in plans.json as `network.architecture`, through every command; and the builders
that break the output contract, each refused with one `error:` line before anything is written.

The external module (EXTERNAL_NETS) is written into a temporary folder that is put on sys.path and
PYTHONPATH, as a user's package would be; nnlite's files are not touched.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nnlite.common.errors import UserError
from nnlite.common.schema import to_jsonable
from nnlite.network import build_unet
from nnlite.network.builders import DEFAULT_ARCHITECTURE, build_from_plan, check_output_contract
from nnlite.plans import NetworkPlan, load_plans, save_plans
from nnlite.training import checkpoints
from tests.command_line import assert_one_line_error, run_command
from nnlite.plan import main as plan_main
from nnlite.planning import fingerprint as fingerprint_module
from tests.work_fixtures import CONFIG, FEW_SAMPLES, kill_in_second_epoch, small_work

REPO = Path(__file__).resolve().parents[1]
MODULE = "nnlite_test_external_nets"  # a name no installed package has
EXTERNAL_NETS = '''
"""A user's networks: the built-in U-Net at another width (one line around build_unet), and builders
that break nnlite's output contract in the ways the tests expect to be refused."""
from dataclasses import replace

from torch import nn

from nnlite.network import build_unet


def build(plan, in_channels, num_classes, *, deep_supervision=True, region_outputs=False, width=2):
    """The built-in U-Net with `width` features in its first stage, doubling up to 8 x width."""
    features = tuple(width * 2 ** min(stage, 3) for stage in range(plan.n_stages))
    return build_unet(replace(plan, features_per_stage=features), in_channels, num_classes,
                      deep_supervision=deep_supervision, region_outputs=region_outputs)


def build_residual(plan, in_channels, num_classes, **options):
    """A residual encoder, one block per stage, width 3."""
    plan = replace(plan, encoder="residual", blocks_per_stage=(1,) * plan.n_stages)
    return build(plan, in_channels, num_classes, width=3, **options)


class Halving(nn.Module):
    def __init__(self, in_channels, num_classes, ndim):
        super().__init__()
        conv = nn.Conv3d if ndim == 3 else nn.Conv2d
        self.conv = conv(in_channels, num_classes, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)  # logits at half the input size


def halving(plan, in_channels, num_classes, **options):
    return Halving(in_channels, num_classes, plan.ndim)


def without_head(plan, in_channels, num_classes, **options):
    return build(replace(plan, class_head=0), in_channels, num_classes, **options)


class Wrapped(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)  # its own deep_supervision attribute never reaches the inner U-Net


def hides_switch(plan, in_channels, num_classes, **options):
    return Wrapped(build(plan, in_channels, num_classes, **options))


def raises(plan, in_channels, num_classes, **options):
    raise ValueError("this network needs 4 stages")


def not_a_module(plan, in_channels, num_classes, **options):
    return {"conv": None}


NOT_CALLABLE = 3
'''


@pytest.fixture
def external_nets(tmp_path, monkeypatch) -> str:
    """EXTERNAL_NETS importable as MODULE here and in subprocesses; returns the module name."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(EXTERNAL_NETS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return MODULE


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    """A small demo WORK (3 cases, 3d_fullres with a classification head), planned and preprocessed."""
    return small_work(tmp_path_factory.mktemp("custom_network"))


def copy_work(work: Path, target: Path) -> Path:
    shutil.copytree(work, target, ignore=shutil.ignore_patterns("results"))
    return target


PLAN = NetworkPlan(strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), kernel_sizes=((3, 3, 3),) * 3,
                   features_per_stage=(8, 16, 32))


def build(plan: NetworkPlan, deep_supervision: bool = True):
    return build_from_plan(plan, 1, 3, deep_supervision=deep_supervision, region_outputs=False, where="test")


# --- the builder and its contract, in process ----------------------------------------------------------

def test_the_builtin_unet_is_the_default_builder_and_plans_json_does_not_change():
    assert "architecture" not in to_jsonable(PLAN) and "kwargs" not in to_jsonable(PLAN)
    torch.manual_seed(0)
    default = build(PLAN).state_dict()
    torch.manual_seed(0)
    named = build(replace(PLAN, architecture=DEFAULT_ARCHITECTURE)).state_dict()
    torch.manual_seed(0)
    direct = build_unet(PLAN, 1, 3).state_dict()
    assert all(torch.equal(default[k], named[k]) and torch.equal(default[k], direct[k]) for k in direct)


def test_an_external_builder_is_called_with_the_plan_and_its_kwargs(external_nets):
    plan = replace(PLAN, architecture=f"{external_nets}:build", kwargs={"width": 5})
    network = build(plan)
    assert network.encoder.stages[0][0].conv.out_channels == 5  # the kwargs reached the builder
    assert network.encoder.stages[2][0].conv.out_channels == 20
    check_output_contract(plan, 1, 3, False, "test")  # deep supervision, eval, the switch: all kept
    check_output_contract(replace(plan, class_head=2), 1, 3, False, "test")
    residual = build(replace(plan, architecture=f"{external_nets}:build_residual", kwargs={}))
    assert residual.plan.encoder == "residual" and residual.encoder.stem.conv.out_channels == 3


def test_the_contract_check_leaves_the_global_rng_alone(external_nets):
    plan = replace(PLAN, architecture=f"{external_nets}:build")
    torch.manual_seed(3)
    check_output_contract(plan, 1, 3, False, "test")
    after_check = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(after_check, torch.rand(4))


BROKEN = [  # builder, class_head, what the one error line says
    ("no_such_module_xyz:build", 0, "cannot import module 'no_such_module_xyz'"),
    (f"{MODULE}:biuld", 0, "has no 'biuld' (did you mean 'build'?)"),
    (f"{MODULE}:NOT_CALLABLE", 0, "is not a function"),
    (f"{MODULE}:raises", 0, "failed: ValueError: this network needs 4 stages"),
    (f"{MODULE}:not_a_module", 0, "returned a dict, not a torch nn.Module"),
    (f"{MODULE}:halving", 0, "it returns (2, 3, 4, 4, 4), expected logits (2, 3, 8, 8, 8)"),
    (f"{MODULE}:without_head", 2, "the plan has a classification head (network.class_head = 2)"),
    (f"{MODULE}:hides_switch", 0, "after network.deep_supervision = False"),
]


@pytest.mark.parametrize("architecture, head, message", BROKEN, ids=[b[0].split(":")[1] for b in BROKEN])
def test_a_broken_builder_is_one_user_error(external_nets, architecture, head, message):
    plan = replace(PLAN, architecture=architecture, class_head=head)
    with pytest.raises(UserError, match="^where: ") as error:
        check_output_contract(plan, 1, 3, False, "where")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_kwargs_the_builder_does_not_take_are_named(external_nets):
    with pytest.raises(UserError, match="unexpected keyword argument 'wdth'"):
        build(replace(PLAN, architecture=f"{external_nets}:build", kwargs={"wdth": 4}))
    with pytest.raises(UserError, match="the built-in U-Net takes no kwargs"):
        build(replace(PLAN, kwargs={"width": 4}))


def test_an_architecture_that_is_not_module_colon_function_is_refused_by_the_plan():
    with pytest.raises(UserError, match="is not 'module.path:function'"):
        replace(PLAN, architecture="my_package.nets.build")


# --- the commands: one error line, nothing written -----------------------------------------------------

@pytest.mark.parametrize("builder, message", [
    ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
    (f"{MODULE}:halving", "breaks the output contract in train mode"),
])
def test_plan_with_a_broken_network_is_one_error_line_and_writes_nothing(
        external_nets, planned, tmp_path, builder, message):
    work = tmp_path / "work"
    result = run_command("plan", "--fingerprint", planned / "fingerprint.json", work, "--configs", CONFIG,
                         "--network", builder)
    assert_one_line_error(result, "--network", message)
    assert not work.exists() or not any(work.iterdir())


@pytest.mark.parametrize("builder, message", [
    (f"{MODULE}:halving", "breaks the output contract in train mode"),
    (f"{MODULE}:without_head", "the plan has a classification head"),  # the demo plans one
])
def test_add_config_with_a_broken_network_is_one_error_line_and_writes_nothing(
        external_nets, planned, tmp_path, builder, message):
    work = copy_work(planned, tmp_path / "work")
    before = (work / "plans.json").read_bytes()
    result = run_command("plan", work, "--add-config", "broken", "--from", CONFIG,
                         "--set", f"network.architecture={builder}")
    assert_one_line_error(result, "--set network.architecture", message)
    assert (work / "plans.json").read_bytes() == before


@pytest.mark.parametrize("builder, message", [
    ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
    (f"{MODULE}:without_head", "the plan has a classification head"),
])
def test_train_with_a_broken_network_is_one_error_line_and_makes_no_fold_folder(
        external_nets, planned, tmp_path, builder, message):
    work = copy_work(planned, tmp_path / "work")
    plans = load_plans(work / "plans.json")
    config = plans.configurations[CONFIG]
    broken = replace(config, network=replace(config.network, architecture=builder))
    save_plans(replace(plans, configurations={CONFIG: broken}), work / "plans.json")  # edited by hand
    result = run_command("train", work, "--config", CONFIG, "--fold", "0", "--device", "cpu",
                         "--train-config", "debug")
    assert_one_line_error(result, f"configurations.{CONFIG}.network.architecture", message)
    assert not (work / "results" / CONFIG).exists()


# --- a user's network through every command ------------------------------------------------------------

TINY = "tiny"  # the external network at a small patch
RESIDUAL = "tiny_residual"  # another function of the same module, set with --set network.architecture
SCHEDULE = ["--device", "cpu", "--seed", "0", "--workers", "0", "--train-config", "debug"]


def plan_external_network(raw: Path, work: Path) -> None:
    """`plan RAW WORK --network` (in process, sampling few voxels for the intensity statistics), two
    added configurations, `preprocess`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fingerprint_module, "FOREGROUND_SAMPLES_TOTAL", FEW_SAMPLES)
        assert plan_main([str(raw), str(work), "--configs", CONFIG, "--network", f"{MODULE}:build",
                          "--workers", "1"]) == 0
    assert command("plan", work, "--add-config", TINY, "--from", CONFIG, "--set", "patch_size=[8,32,32]",
                   "--set", "network.kwargs={width: 4}") == 0
    assert command("plan", work, "--add-config", RESIDUAL, "--from", CONFIG, "--set", "patch_size=[8,32,32]",
                   "--set", f"network.architecture={MODULE}:build_residual") == 0
    assert command("preprocess", work, "--workers", "1") == 0


def command(name: str, *args: str | Path) -> int:
    """`python -m nnlite.<name> ARGS` in this process (its main; a subprocess costs a torch import)."""
    return importlib.import_module(f"nnlite.{name}").main([str(arg) for arg in args])


def first_width(checkpoint: dict) -> int:
    return checkpoint["network"]["encoder.stages.0.0.conv.weight"].shape[0]


@pytest.mark.slow
def test_an_external_network_plans_trains_resumes_predicts_ensembles_and_exports(external_nets, planned, tmp_path,
                                                                                  capsys):
    work = copy_work(planned, tmp_path / "work")
    plan_external_network(planned.parent / "raw", work)
    saved = json.loads((work / "plans.json").read_text())["configurations"]
    assert saved[CONFIG]["network"]["architecture"] == f"{MODULE}:build"
    assert saved[TINY]["inherits_from"] == CONFIG and saved[TINY]["network"] == {"kwargs": {"width": 4}}
    assert saved[RESIDUAL]["network"] == {"architecture": f"{MODULE}:build_residual"}

    # resume after SIGKILL equals an uninterrupted run, bit for bit
    args = ["--config", TINY, "--fold", "0", "--epochs", "2", "--iters-per-epoch", "40", *SCHEDULE,
            "--set", "validation.enabled=false"]
    straight = copy_work(work, tmp_path / "straight")
    assert command("train", straight, *args) == 0
    fold = work / "results" / TINY / "fold_0"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ["PYTHONPATH"]])}
    process = subprocess.Popen([sys.executable, "-m", "nnlite.train", str(work), *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_in_second_epoch(process, fold, lambda: os.kill(process.pid, signal.SIGKILL))
    assert command("train", work, *args, "--resume") == 0
    a = torch.load(straight / "results" / TINY / "fold_0" / checkpoints.FINAL, weights_only=True)
    b = torch.load(fold / checkpoints.FINAL, weights_only=True)
    assert a["network"].keys() == b["network"].keys()
    assert all(torch.equal(a["network"][k], b["network"][k]) for k in a["network"])
    network = b["plan"]["configurations"][TINY]["network"]  # the checkpoint records builder and kwargs
    assert network["architecture"] == f"{MODULE}:build" and network["kwargs"] == {"width": 4}
    assert first_width(b) == 4

    # a second fold and the other builder (with the final validation: the deep-supervision switch)
    short = ["--epochs", "1", "--iters-per-epoch", "2", *SCHEDULE]
    assert command("train", work, "--config", TINY, "--fold", "1", *short) == 0
    assert command("train", work, "--config", RESIDUAL, "--fold", "0", *short) == 0
    residual = torch.load(work / "results" / RESIDUAL / "fold_0" / checkpoints.FINAL, weights_only=True)
    assert residual["network"]["encoder.stem.conv.weight"].shape[0] == 3  # build_residual's own width
    assert (work / "results" / RESIDUAL / "fold_0" / "validation" / "summary.json").is_file()

    # predict with the two folds' ensemble; export to ONNX (the classification head left out)
    images = Path(json.loads((work / "plans.json").read_text())["extra"]["raw_path"]) / "imagesTr"
    assert command("predict", work, images, tmp_path / "out", "--config", TINY, "--folds", "0", "1",
                   "--device", "cpu", "--no-mirroring") == 0
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 3
    onnx = tmp_path / "tiny.onnx"
    assert command("export", "onnx", work, onnx, "--config", TINY, "--fold", "0") == 0
    assert onnx.is_file() and "max |Δ|" in capsys.readouterr().out

    # without the user's folder on PYTHONPATH, loading the checkpoints is one clear line
    clean = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "nnlite", "predict", str(work), str(images),
                             str(tmp_path / "out2"), "--config", TINY, "--device", "cpu"],
                            capture_output=True, text=True, env=clean, cwd=tmp_path)
    assert_one_line_error(result, f"configurations.{TINY}.network.architecture",
                          f"cannot import module '{MODULE}'")
    assert not list((tmp_path / "out2").glob("*.nii.gz"))
