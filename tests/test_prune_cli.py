"""`hadmc-deploy prune` and `inspect`'s group table, driven through the CLI entry point."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hadmc_deploy.cli import main
from hadmc_deploy.models.demo import DEMO_ARCH, demo_cnn

torch.set_num_threads(1)
SHAPE = "1,1,28,28"


@pytest.fixture()
def demo_sd(tmp_path):  # noqa: ANN001, ANN201
    path = tmp_path / "demo.pth"
    torch.save(demo_cnn().state_dict(), path)
    return path


def _json(capsys) -> dict:  # noqa: ANN001
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_prune_state_dict_then_use_checkpoint_everywhere(demo_sd, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "pruned.pth"
    assert main(["prune", str(demo_sd), "--arch", DEMO_ARCH, "--input-shape", SHAPE, "--ratio", "0.5", "--round-to", "8", "-o", str(out), "--json", "-q"]) == 0
    result = _json(capsys)
    assert out.is_file() and result["ok"]
    assert result["params_after"] < 0.4 * result["params_before"] and result["macs_after"] < 0.4 * result["macs_before"]
    assert all(k % 8 == 0 for gid, k in result["plan"]["keep"].items() if gid != "fc")
    # timed at the precision the prediction priced (the CPU target's INT8), not FP32 beside an INT8 price
    assert (result["measured"]["precision"], result["measured"]["batch"]) == ("int8", 1) and result["measured"]["speedup"] > 0
    # the checkpoint is a MODEL for every command: inspect lists its (narrower) groups
    assert main(["inspect", str(out), "--json", "-q"]) == 0
    info = _json(capsys)
    assert info["kind"] == "pruned" and info["params"] == result["params_after"]
    widths = {g["id"]: g["width"] for g in info["groups"]}
    assert widths["conv1"] == 16 and widths["fc"] == 10


def test_prune_macs_ratio_and_taylor(demo_sd, tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "m.pth"
    assert main(["prune", str(demo_sd), "--arch", DEMO_ARCH, "--input-shape", SHAPE, "--macs-ratio", "0.4", "--importance", "taylor",
                 "--data", "builtin:digits", "--importance-samples", "32", "--ignore", "layer1.0.conv1", "-o", str(out), "--json", "-q"]) == 0
    result = _json(capsys)
    assert result["macs_after"] <= 0.6 * result["macs_before"] + 1
    assert result["plan"]["keep"].get("layer1.0.conv1", 32) == 32  # --ignore kept it whole


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--ratio", "1.5"], 2, "outside (0, 1)"),
        (["--ratio", "0"], 2, "outside (0, 1)"),
        (["--ratio", "0.5", "--macs-ratio", "0.2"], 2, "exactly one"),
        (["--ratio", "0.5", "--ignore", "layer9"], 9, "names no module"),
        (["--ratio", "0.5", "--importance", "taylor"], 2, "needs --data"),
        (["--speedup", "0.5"], 2, "greater than 1"),
    ],
)
def test_prune_bad_input(demo_sd, tmp_path, capsys, extra, code, message) -> None:  # noqa: ANN001
    out = tmp_path / "never.pth"
    rc = main(["prune", str(demo_sd), "--arch", DEMO_ARCH, "--input-shape", SHAPE, "-o", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == code and message in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".never*"))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.c(x)
        return -self.c(x)


class NothingPrunable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(x).mean((2, 3))


def untraceable() -> nn.Module:
    return Untraceable()


def nothing_prunable() -> nn.Module:
    return NothingPrunable()


@pytest.mark.parametrize(("arch", "message"), [("untraceable", "cannot be traced"), ("nothing_prunable", "nothing in this model can be pruned")])
def test_prune_model_errors(tmp_path, capsys, arch, message) -> None:  # noqa: ANN001
    out = tmp_path / "never.pth"
    rc = main(["prune", "--arch", f"{__file__}:{arch}", "--input-shape", SHAPE, "--ratio", "0.5", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 9 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_prune_and_build_share_options_and_give_the_same_checkpoint(demo_sd, tmp_path, capsys) -> None:  # noqa: ANN001
    """One option table, one orchestration: the same plan through `prune` and `build` gives
    the same pruned checkpoint, weight for weight."""
    from hadmc_deploy.loading import load_model

    common = [str(demo_sd), "--arch", DEMO_ARCH, "--input-shape", SHAPE, "--speedup", "1.5", "--target", "cpu", "--search", "greedy",
              "--precision", "fp32", "--calib", "builtin:digits:train", "-q", "--json",
              # one round and the analytic model: the plan is the prediction's, so both runs search alike
              "--budget-rounds", "1", "--no-measure-lut",
              # no distillation on the calibration images: its step count is cut to a time budget, so two
              # runs on a loaded machine (tests in parallel) trained different numbers of steps
              "--no-distill"]
    pruned = tmp_path / "p.pth"
    # the closed loop measures the plan: on a loaded machine it may miss the budget (exit 14), and the
    # checkpoint is written either way (a test never asserts a wall-clock result)
    code = main(["prune", *common, "--timing-rounds", "0", "-o", str(pruned)])
    result = _json(capsys)
    assert code in (0, 14), result
    prune_plan = json.loads((tmp_path / "p-prune" / "width_plan.json").read_text())
    meta, prune_keep = prune_plan["meta"], prune_plan["keep"]
    assert meta["method"] == "greedy" and meta["baseline_ms"] / meta["predicted_ms"] >= 1.5 - 1e-9
    if code == 0:
        assert result["search"]["method"] == "greedy" and result["predicted"]["speedup"] >= 1.5 - 1e-9
    # the build also judges the budget on its measurement (exit 14 when missed) and, without --eval, the pruned
    # model's agreement with this random-weight original (exit 15 when it fails); the checkpoint is the same either way
    assert main(["build", *common, "--out", str(tmp_path / "b"), "--batch", "1", "--runs", "3", "--warmup", "1"]) in (0, 14, 15)
    capsys.readouterr()
    a, b = load_model(pruned).model.state_dict(), load_model(tmp_path / "b" / "recovered.pth").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    build_keep = json.loads((tmp_path / "b" / "width_plan.json").read_text())["keep"]
    assert build_keep and build_keep == prune_keep
