"""`prune` exits as `build` does when the latency check measured the budget as missed."""

from pathlib import Path

import pytest

from hadmc_deploy.commands.prune import raise_if_budget_missed
from hadmc_deploy.errors import BudgetError


def test_missed_budget_exits_14_naming_the_measurement_and_checkpoint() -> None:
    check = {"checked": True, "met": False, "goal_speedup": 2.0, "measured_speedup": 1.42, "precision": "int8", "batch": 32, "noise": 0.04}
    with pytest.raises(BudgetError) as info:
        raise_if_budget_missed(check, Path("out/pruned.pth"))
    assert info.value.exit_code == 14
    assert info.value.best_speedup == pytest.approx(1.42)
    text = info.value.one_line()
    assert "2.00x" in text and "1.42x" in text and "out/pruned.pth" in text


@pytest.mark.parametrize("check", [{}, {"checked": False}, {"checked": True, "met": True, "goal_speedup": 1.5, "measured_speedup": 1.6}])
def test_met_or_unchecked_budget_passes(check: dict) -> None:
    raise_if_budget_missed(check, Path("pruned.pth"))
