"""Timing sessions: blocking workers where several sessions live at once, spinning as deployed where one does."""

from __future__ import annotations

import torch
from torch import nn

from hadmc_deploy.latency import context_probe
from hadmc_deploy.latency.repeat import measuring_session


def _model(tmp_path):  # noqa: ANN001, ANN202
    path = tmp_path / "m.onnx"
    torch.onnx.export(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval(), torch.zeros(1, 1, 8, 8), str(path), dynamo=False, input_names=["input"])
    return path


def _spins(session) -> bool:  # noqa: ANN001
    """ORT spins unless the entry says "0" (an unset entry raises when read)."""
    try:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except RuntimeError:
        return True


def test_measuring_sessions_block_unless_asked_to_spin(tmp_path):
    path = _model(tmp_path)
    assert not _spins(measuring_session(path, 2))
    assert _spins(measuring_session(path, 2, allow_spinning=True))


def test_whole_deployed_models_are_timed_spinning_as_deployed(tmp_path, monkeypatch):
    """The context fit's whole-model times set the table's level: they must come from sessions that
    run as the deployed one does (blocking workers ran the demo CNN up to 1.33x slower at batch 1)."""
    seen = []
    real = measuring_session

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        session = real(*args, **kwargs)
        seen.append(_spins(session))
        return session

    monkeypatch.setattr("hadmc_deploy.latency.repeat.measuring_session", recording)
    assert context_probe.whole_model_ms(_model(tmp_path), batch=1, threads=2, runs=3) > 0
    assert seen == [True]
