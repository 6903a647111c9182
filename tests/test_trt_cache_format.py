"""TensorRT calibration-cache format: known bit patterns, header versions, round trips, malformed files."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hadmc_deploy.calibration import trt_cache
from hadmc_deploy.errors import DataError


def test_scale_hex_is_big_endian_float32_bits():
    # 1/127 is 0x3c010204 as IEEE-754 float32; 1.0 is 0x3f800000.
    assert trt_cache.scale_to_hex(1.0 / 127.0) == "3c010204"
    assert trt_cache.scale_to_hex(1.0) == "3f800000"
    # Independent decoding through numpy's big-endian float32.
    assert trt_cache.hex_to_scale("3c010a14") == float(np.frombuffer(bytes.fromhex("3c010a14"), ">f4")[0])
    # TensorRT drops leading zeros in some writers; short hex still reads.
    assert trt_cache.hex_to_scale("800000") == pytest.approx(np.float32(1.1754944e-38))


@pytest.mark.parametrize(("version", "number"), [("8.6.1", 8601), ("8.5.3.1", 8503), ("10.0", 100000), ("10.3.0", 100300), ("11.4.0.106", 110400)])
def test_header_version_number_follows_nv_tensorrt_version(version, number):
    assert trt_cache.version_number(version) == number
    assert trt_cache.header_line(version, "minmax") == f"TRT-{number}-MinMaxCalibration"


def test_write_cache_layout_and_read_back(tmp_path):
    path = trt_cache.write_cache(tmp_path / "calibration.cache", {"input": 2.0, "/conv1/Conv_output_0": 12.7}, trt_version="10.3")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert lines[1] == f"input: {trt_cache.scale_to_hex(2.0 / 127)}"
    scales = trt_cache.read_cache(path)
    assert scales["/conv1/Conv_output_0"] == pytest.approx(0.1, rel=1e-6)
    assert trt_cache.read_header(path) == (100300, "EntropyCalibration2")


def test_tensor_names_with_colon_space_survive(tmp_path):
    name = "(Unnamed Layer* 4) [Constant]: weird_output"
    path = trt_cache.write_cache(tmp_path / "c.cache", {name: 1.27})
    assert trt_cache.read_cache(path) == {name: pytest.approx(0.01)}


def test_accepts_ranges_entries_with_min_max(tmp_path):
    path = trt_cache.write_cache(tmp_path / "c.cache", {"x": {"min": -3.0, "max": 1.0}, "y": {"amax": 0.5}})
    assert trt_cache.read_cache(path) == {"x": pytest.approx(3 / 127), "y": pytest.approx(0.5 / 127)}


@pytest.mark.parametrize("text", ["", "not a header\nx: 3f800000\n", "TRT-100300-EntropyCalibration2\nx 3f800000\n", "TRT-100300-EntropyCalibration2\nx: zz\n"])
def test_malformed_cache_raises_data_error(tmp_path, text):
    path = tmp_path / "bad.cache"
    path.write_text(text)
    with pytest.raises(DataError):
        trt_cache.read_cache(path)


def test_negative_or_nan_amax_is_refused(tmp_path):
    with pytest.raises(DataError):
        trt_cache.write_cache(tmp_path / "c.cache", {"x": float("nan")})
    with pytest.raises(DataError):
        trt_cache.write_cache(tmp_path / "c.cache", {"x": -1.0})
    assert not (tmp_path / "c.cache").exists()


def test_retarget_header_keeps_scales_bit_exact(tmp_path):
    path = trt_cache.write_cache(tmp_path / "c.cache", {"a": 0.3, "b": 7.0}, trt_version="10.0")
    out = trt_cache.retarget_header(path.read_bytes(), "8.6.1", "MinMaxCalibration").decode()
    assert out.splitlines()[0] == "TRT-8601-MinMaxCalibration"
    assert out.splitlines()[1:] == path.read_text().splitlines()[1:]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(lambda s: s.strip() == s),
                       st.floats(min_value=1e-6, max_value=1e6, allow_nan=False), min_size=1, max_size=8))
def test_round_trip_property(tmp_path_factory, amax):
    path = tmp_path_factory.mktemp("cache") / "calibration.cache"
    trt_cache.write_cache(path, amax)
    back = trt_cache.read_cache(path)
    assert set(back) == set(amax)
    for name, value in amax.items():
        assert back[name] == float(np.float32(value / 127.0))


def test_write_cache_takes_activation_ranges(tmp_path):
    from hadmc_deploy.calibration.ranges import ActivationRanges, TensorRange

    ranges = ActivationRanges({"x": TensorRange(2.54, -1.0, 2.54)}, "entropy", 8, "m", "d")
    assert trt_cache.read_cache(trt_cache.write_cache(tmp_path / "c.cache", ranges)) == {"x": pytest.approx(0.02)}


@pytest.mark.parametrize(("method", "header"), [("entropy", "EntropyCalibration2"), ("minmax", "MinMaxCalibration"), ("percentile", "PercentileCalibration"), ("auto", "PerTensorCalibration")])
def test_header_names_the_method_of_the_ranges(tmp_path, method, header):
    from hadmc_deploy.calibration.ranges import ActivationRanges, TensorRange

    ranges = ActivationRanges({"x": TensorRange(2.54, -1.0, 2.54)}, method, 16, "m", "d")
    path = trt_cache.write_cache(tmp_path / "c.cache", ranges, trt_version="10.3")
    assert trt_cache.read_header(path) == (100300, header)
    assert trt_cache.read_header(trt_cache.write_cache(tmp_path / "d.cache", ranges, algo="minmax"))[1] == "MinMaxCalibration"  # explicit wins
