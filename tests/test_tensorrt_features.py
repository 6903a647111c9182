"""Feature detection and precision-path choice per TensorRT release, on FAKE tensorrt modules.

These are fake-module tests: the stand-in modules only have the attributes each
release documents, so they check our hasattr-based branching. They are not
evidence that any engine builds.
"""

from __future__ import annotations

import types

import pytest
from tensorrt_fake_module import fake_trt_10, fake_trt_11, fake_trt_86

from hadmc_deploy.backends.tensorrt_features import detect_features, flag_bits, plan_precision
from hadmc_deploy.errors import UsageError


def test_fake_module_features_trt10():
    """Fake-module test: TensorRT 10.x has weak typing, calibrators, no EXPLICIT_BATCH need."""
    f = detect_features(fake_trt_10())
    assert f.weak_typing and f.implicit_calibration and f.minmax_calibrator
    assert not f.needs_explicit_batch and f.strongly_typed_flag and not f.strongly_typed_only
    assert f.missing == ()


def test_fake_module_features_trt11():
    """Fake-module test: TensorRT 11 has no precision flags or calibrators: strongly typed only."""
    f = detect_features(fake_trt_11())
    assert not f.weak_typing and not f.implicit_calibration and f.strongly_typed_only
    assert not f.needs_explicit_batch


def test_fake_module_features_trt86_needs_explicit_batch():
    """Fake-module test: TensorRT 8.6 still has implicit batch, so ONNX networks need EXPLICIT_BATCH."""
    f = detect_features(fake_trt_86())
    assert f.needs_explicit_batch and f.implicit_calibration and not f.strongly_typed_flag
    plan = plan_precision(f, "fp32")
    assert plan.network_flags == ("EXPLICIT_BATCH",)


def test_too_old_module_lists_missing_api():
    old = types.SimpleNamespace(__version__="7.2.3", Builder=type("B", (), {}), BuilderFlag=types.SimpleNamespace(INT8=1, FP16=0))
    f = detect_features(old)
    assert "Builder.build_serialized_network" in f.missing
    assert "IExecutionContext.execute_async_v3" in f.missing


def test_fake_module_trt10_int8_qdq_uses_int8_and_fp16_flags():
    """Fake-module test: explicit quantization on 10.x = QDQ graph + INT8|FP16 flags, not strongly typed."""
    plan = plan_precision(detect_features(fake_trt_10()), "int8", "qdq")
    assert (plan.path, plan.onnx_kind, plan.builder_flags, plan.strongly_typed) == ("explicit-qdq-flags", "qdq", ("INT8", "FP16"), False)
    plan = plan_precision(detect_features(fake_trt_10()), "int8", "qdq", fp16_rest=False)
    assert plan.builder_flags == ("INT8",)


def test_fake_module_trt11_int8_is_strongly_typed_without_flags():
    """Fake-module test: on 11 INT8 comes only from Q/DQ; no builder flags at all."""
    plan = plan_precision(detect_features(fake_trt_11()), "int8", "qdq")
    assert plan.path == "explicit-qdq-strongly-typed" and plan.strongly_typed
    assert plan.builder_flags == () and plan.network_flags == ()
    assert plan.onnx_kind == "qdq-fp16-typed"
    assert plan_precision(detect_features(fake_trt_11()), "int8", "qdq", fp16_rest=False).onnx_kind == "qdq"


def test_fake_module_trt11_refuses_calibrator_mode():
    """Fake-module test: implicit calibration is gone in 11; the error names the alternative."""
    with pytest.raises(UsageError, match="removed in TensorRT 11"):
        plan_precision(detect_features(fake_trt_11()), "int8", "calibrator")


def test_fake_module_trt10_calibrator_paths():
    """Fake-module test: calibrator mode on 10.x uses the float graph, the INT8 flag and a calibrator."""
    f = detect_features(fake_trt_10())
    plan = plan_precision(f, "int8", "calibrator", calibrator="minmax")
    assert (plan.path, plan.onnx_kind, plan.calibrator) == ("implicit-calibrator-minmax", "float", "minmax")
    assert "INT8" in plan.builder_flags


def test_fake_module_fp16_flag_vs_typed_graph():
    """Fake-module test: FP16 is a flag on 10.x and an FP16-typed graph on 11."""
    assert plan_precision(detect_features(fake_trt_10()), "fp16").builder_flags == ("FP16",)
    plan11 = plan_precision(detect_features(fake_trt_11()), "fp16")
    assert plan11.onnx_kind == "fp16-typed" and plan11.builder_flags == ()


def test_bad_precision_and_mode_are_usage_errors():
    f = detect_features(fake_trt_10())
    with pytest.raises(UsageError):
        plan_precision(f, "int4")
    with pytest.raises(UsageError):
        plan_precision(f, "int8", "ptq")


def test_fake_module_flag_bits_follow_each_release_enum():
    """Fake-module test: the enum values are NvInfer.h's per release, and flag_bits shifts them."""
    assert flag_bits(fake_trt_86().NetworkDefinitionCreationFlag, ("EXPLICIT_BATCH",)) == 1
    assert flag_bits(fake_trt_10().NetworkDefinitionCreationFlag, ("STRONGLY_TYPED",)) == 2
    assert flag_bits(fake_trt_11().NetworkDefinitionCreationFlag, ("STRONGLY_TYPED",)) == 1  # value 0 on 11
    assert flag_bits(fake_trt_10().NetworkDefinitionCreationFlag, ()) == 0
    assert not hasattr(fake_trt_86().NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    assert not hasattr(fake_trt_11().NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert (int(fake_trt_86().BuilderFlag.TF32), int(fake_trt_10().BuilderFlag.TF32), int(fake_trt_11().BuilderFlag.TF32)) == (7, 6, 6)
