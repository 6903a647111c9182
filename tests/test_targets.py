"""Target profiles: built-ins, the ISA-dependent INT8 form, and user TOML targets."""

from __future__ import annotations

import pytest

from hadmc_deploy.errors import UsageError
from hadmc_deploy.targets import T4, cpu_profile, get_target, load_targets_file


def test_t4_numbers_from_the_datasheet():
    assert T4.backend == "tensorrt"
    assert T4.datasheet.peak_tflops == {"int8": 130.0, "fp16": 65.0, "fp32": 8.1}
    assert T4.datasheet.memory_gbps == 320.0
    assert T4.alignment("int8") == 32 and T4.alignment("fp16") == 8


@pytest.mark.parametrize("isa, form", [("avx2", "qdq_u8s8"), ("avx512_vnni", "qdq_u8s8"), ("arm64", "qdq_s8s8")])
def test_cpu_int8_form_follows_isa(isa, form):
    assert cpu_profile(isa).int8_form == form


def test_user_targets_file(tmp_path):
    path = tmp_path / "targets.toml"
    path.write_text(
        """
[targets.a10]
inherits = "cuda"
description = "NVIDIA A10"
round_to = { int8 = 32, fp16 = 16 }
batch_sizes = [1, 4]
[targets.a10.datasheet]
peak_tflops = { fp16 = 125.0 }
memory_gbps = 600
"""
    )
    targets = load_targets_file(path)
    a10 = targets["a10"]
    assert a10.backend == "tensorrt" and a10.round_to["fp16"] == 16 and a10.batch_sizes == (1, 4)
    assert a10.datasheet.peak_tflops["fp16"] == 125.0 and a10.datasheet.peak_tflops["int8"] == 100.0
    assert get_target("a10", path).name == "a10"


def test_bad_targets_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[targets.x\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_targets_file(bad)
    with pytest.raises(UsageError, match="does not exist"):
        load_targets_file(tmp_path / "none.toml")
