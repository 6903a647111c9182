"""PyTorch -> verified ONNX: export, simplify, check, then prove it computes what the model computes.

A short driver in onnx-simplifier's shape: export (the dynamo exporter, falling back to
the TorchScript one with the reason recorded), simplify (onnxslim, falling back to
onnxsim), fold any Conv+BatchNormalization the simplifier left, give a bias-less Conv that
feeds an Add a zero bias (so ONNX Runtime fuses the two), check and infer shapes, and
finally run the graph in ONNX Runtime against PyTorch on the given inputs. A graph
that disagrees beyond tolerance raises `VerificationError`; nothing is written then.
The file is written once, atomically, as a single .onnx (no external-data side file).

Long because exporter choice with its fallback, simplification, BN folding and verification are
one ordered pass over the same graph, and each step's record goes into the same export record.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from hadmc_deploy import onnx_passes
from hadmc_deploy.batch_check import check_batch_free, runs_at
from hadmc_deploy.errors import ExportError, GraphError, UsageError
from hadmc_deploy.fileio import atomic_path, sha256_file
from hadmc_deploy.onnx_verify import (
    Verification,
    flatten_outputs,
    raise_if_failed,
    verify,
    verify_file,
    verify_graph,
    verify_inputs_for,
)
from hadmc_deploy.ui import UI, quiet_ui

__all__ = ["EXPORTERS", "ExportResult", "Verification", "check_and_infer", "export_onnx", "reverified", "simplify_graph", "verify_file"]

INPUT_NAME = "input"
OUTPUT_NAME = "output"
#: protobuf's hard limit; below it every model is one self-contained file.
PROTOBUF_LIMIT = 2 * 1024**3
#: simplifiers in the order tried: tools/bench_export.py measured both succeed on our models;
#: onnxslim is pure Python (no native build to break on a new Python) and keeps dynamic dims.
SIMPLIFIERS = ("onnxslim", "onnxsim")
#: metadata_props key holding the export record (exporter, simplifier, verification errors),
#: so a backend building from the .onnx alone can put them in its artifact's metadata.
EXPORT_RECORD_KEY = "hadmc.export"


@dataclass
class ExportResult:
    path: str
    input_name: str
    output_names: list[str]
    opset: int
    exporter: str  # "dynamo" | "legacy"
    exporter_fallback_reason: str | None
    simplifier: str  # "onnxslim" | "onnxsim" | "none"
    simplifier_notes: list[str]
    dynamic_batch: bool
    input_shape: list[Any]
    output_shapes: list[list[Any]]
    nodes_exported: int
    nodes_final: int
    ops: dict[str, int]
    bn_folded_by_hadmc: int
    verification: Verification
    sha256: str
    size_bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    #: taken from an earlier build's export of the same model (`build/reuse.py`); `seconds` are that export's
    reused: bool = False
    #: bias-less Convs feeding an Add given a zero bias, so that ONNX Runtime fuses them (`onnx_passes.bias_for_add_fusion`)
    conv_biases_added: int = 0

    @property
    def output_name(self) -> str:
        return self.output_names[0]

    @property
    def max_abs_err(self) -> float:
        return self.verification.max_abs_err

    @property
    def max_rel_err(self) -> float:
        return self.verification.max_rel_err

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output_name"] = self.output_name
        data["max_abs_err"] = self.max_abs_err
        data["max_rel_err"] = self.max_rel_err
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportResult:
        """The result `to_dict` wrote (its derived fields dropped)."""
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in names}
        return cls(**{**kept, "verification": Verification(**kept["verification"])})


# -- exporters --------------------------------------------------------------------------
def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool, names: list[str]) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=names,
        dynamic_shapes=dynamic_shapes,
        external_data=False,  # one file: the weights go inside model.onnx (models < 2 GB)
        optimize=True,
        verbose=False,
    )


def _export_legacy(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool, names: list[str]) -> None:
    dynamic_axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]} if dynamic else None
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=names,
        dynamic_axes=dynamic_axes,
        do_constant_folding=True,
    )


#: exporter name -> function, tried in this order.
EXPORTERS = {"dynamo": _export_dynamo, "legacy": _export_legacy}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # torch's messages start with ANSI-coloured boilerplate; keep the first informative line.
    line = next((ln for ln in text if ln.strip()), "")
    return f"{type(exc).__name__}: {line[:300]}"


@contextlib.contextmanager
def _quiet_torch_loggers(enabled: bool):  # noqa: ANN202
    """Mute torch.onnx's registry warnings ("torchvision is not installed. Skipping ...") for one export."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")] if enabled else []
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _run_exporters(model: nn.Module, example: torch.Tensor, workdir: Path, opset: int, dynamic: bool, names: list[str], ui: UI, notes: list[str], exporters: tuple[str, ...]) -> tuple[onnx.ModelProto, str, str | None]:
    fallback_reason = None
    for exporter in exporters:
        fn = EXPORTERS[exporter]
        path = workdir / f"{exporter}.onnx"
        try:
            # The exporters print progress on stdout; keep stdout for results (`--json`).
            with contextlib.redirect_stdout(sys.stderr if ui.debug else io.StringIO()), _quiet_torch_loggers(not ui.debug), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fn(model, example, path, opset, dynamic, names)
            for w in caught:
                if issubclass(w.category, torch.jit.TracerWarning):
                    notes.append(f"{exporter} exporter: {str(w.message).splitlines()[0]}")
            if any(p.suffix == ".data" for p in workdir.iterdir()):
                notes.append(f"{exporter} exporter wrote external data; it is inlined into the single output file")
            return onnx.load(str(path), load_external_data=True), exporter, fallback_reason
        except Exception as exc:  # any exporter failure: record why, try the next one
            reason = _first_line(exc)
            failure = f"{exporter} exporter failed: {reason}"
            if exporter != exporters[-1]:
                fallback_reason = failure
                ui.warn(f"{failure}; falling back to the {exporters[exporters.index(exporter) + 1]} exporter")
                continue
            tried = f"{fallback_reason}; {failure}" if fallback_reason else failure
            raise ExportError(f"the model cannot be exported to ONNX: {tried}", hint="rerun with --debug for the traceback") from exc
    raise AssertionError("unreachable")


# -- simplify, fold, check ------------------------------------------------------------
def simplify_with(name: str, model: onnx.ModelProto) -> onnx.ModelProto:
    if name == "onnxslim":
        import onnxslim

        return onnxslim.slim(model)
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    return simplified


def simplify_graph(model: onnx.ModelProto, notes: list[str]) -> tuple[onnx.ModelProto, str]:
    """The first simplifier that returns a checker-clean graph; the exported graph if none does."""
    for name in SIMPLIFIERS:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                candidate = simplify_with(name, model)
            onnx.checker.check_model(candidate)
            return candidate, name
        except Exception as exc:  # a simplifier bug must not lose the export: try the next one
            notes.append(f"{name} failed: {_first_line(exc)}")
    return model, "none"


def check_and_infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails the ONNX checker: {_first_line(exc)}", hint="try another --opset, or --no-simplify") from exc


def _stamp(model: onnx.ModelProto, record: dict[str, Any]) -> None:
    for prop in list(model.metadata_props):
        if prop.key == EXPORT_RECORD_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=EXPORT_RECORD_KEY, value=json.dumps(record, default=str))


# -- the driver -------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _validate(model: nn.Module, input_shape: tuple[int, ...], opset: int, rtol: float, atol: float) -> tuple[int, ...]:
    if not isinstance(model, nn.Module):
        raise UsageError(f"export_onnx takes an nn.Module, got {type(model).__name__}")
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise UsageError(f"input shape {input_shape} must be positive integers N,C,H,W")
    if not 7 <= opset <= 25:
        raise UsageError(f"opset {opset} is out of range", hint="use an opset between 7 and 25 (18 is the default)")
    if rtol < 0 or atol < 0:
        raise UsageError("rtol and atol must be >= 0")
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if param_bytes >= PROTOBUF_LIMIT:
        raise ExportError(f"the model's weights take {param_bytes / 1024**3:.1f} GB, over ONNX's 2 GB single-file limit", hint="external-data export is not supported")
    return shape


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    out_path: str | Path,
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    simplify: bool = True,
    verify_inputs: np.ndarray | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    ui: UI | None = None,
    exporters: tuple[str, ...] = tuple(EXPORTERS),
) -> ExportResult:
    """Export `model` to a simplified, checked ONNX file verified in ONNX Runtime; see the module doc.

    `exporters` are tried in order (default dynamo, then legacy); tools/bench_export.py passes one
    at a time to measure each.
    """
    ui = ui or quiet_ui()
    start = time.perf_counter()
    shape = _validate(model, input_shape, opset, rtol, atol)
    if not exporters or any(name not in EXPORTERS for name in exporters):
        raise UsageError(f"exporters must be a non-empty subset of {', '.join(EXPORTERS)}, got {exporters}")
    x, inputs_kind = verify_inputs_for(verify_inputs, shape)
    out_path = Path(out_path)
    was_training = model.training
    model.eval()  # BN uses running statistics, so exporters and simplifiers can fold it into the conv
    notes: list[str] = []
    try:
        # A batch of 2 keeps torch.export from specialising the batch axis to the size it saw.
        example = torch.from_numpy(np.resize(x, (2 if dynamic_batch else shape[0], *shape[1:])).astype(np.float32))
        example = example.to(next((p.device for p in model.parameters()), torch.device("cpu")))
        try:
            with torch.no_grad():
                n_outputs = len(flatten_outputs(model(example)))
        except ExportError:
            raise
        except Exception as exc:
            if dynamic_batch and shape[0] != example.shape[0] and runs_at(model, shape):
                check_batch_free(model, shape)  # a batch size written in forward: named, with its line
            raise GraphError(f"the model fails on an input of shape {tuple(example.shape)}: {_first_line(exc)}", hint="pass the right --input-shape N,C,H,W") from exc
        names = [OUTPUT_NAME] + [f"{OUTPUT_NAME}_{i}" for i in range(1, n_outputs)]
        with ui.progress("export", 4) as task, tempfile.TemporaryDirectory(prefix="hadmc-export-") as workdir:
            task.update(info="torch.onnx.export")
            exported, exporter, fallback_reason = _run_exporters(model, example, Path(workdir), opset, dynamic_batch, names, ui, notes, exporters)
            nodes_exported = len(exported.graph.node)
            task.advance()
            task.update(info="simplify")
            final, simplifier = simplify_graph(exported, notes) if simplify else (exported, "none")
            final, folded = onnx_passes.fold_conv_bn(final)
            unfolded = len(onnx_passes.conv_bn_pairs(final))
            if unfolded:  # only where the conv's output also feeds another node: folding would change that input
                notes.append(f"{unfolded} BatchNormalization after a Conv left unfolded (the Conv output has other consumers)")
            final, biases = onnx_passes.bias_for_add_fusion(final)
            final = check_and_infer(final)
            task.advance()
            task.update(info="verify")
            verification = verify(model, final, x, inputs_kind, static_batch=None if dynamic_batch else shape[0], rtol=rtol, atol=atol, ui=ui)
            raise_if_failed(verification, simplifier)
            task.advance()
            task.update(info="write")
            _stamp(final, {"exporter": exporter, "exporter_fallback_reason": fallback_reason, "simplifier": simplifier, "opset": opset, "dynamic_batch": dynamic_batch, "verification": asdict(verification)})
            if onnx_passes.uses_external_data(final):
                raise ExportError("the exported graph still references external data", hint="please report it")
            with atomic_path(out_path) as tmp:
                onnx.save_model(final, str(tmp), save_as_external_data=False)
            task.advance()
    finally:
        model.train(was_training)
    inputs, outputs = onnx_passes.io_shapes(final)
    for note in notes:
        ui.log(f"export: {note}")
    return ExportResult(
        path=str(out_path),
        input_name=INPUT_NAME,
        output_names=names,
        opset=opset,
        exporter=exporter,
        exporter_fallback_reason=fallback_reason,
        simplifier=simplifier,
        simplifier_notes=[n for n in notes if n.startswith(SIMPLIFIERS)],
        dynamic_batch=dynamic_batch,
        input_shape=inputs[0]["shape"],
        output_shapes=[o["shape"] for o in outputs],
        nodes_exported=nodes_exported,
        nodes_final=len(final.graph.node),
        ops=onnx_passes.op_counts(final),
        bn_folded_by_hadmc=folded,
        conv_biases_added=biases,
        verification=verification,
        sha256=sha256_file(out_path),
        size_bytes=out_path.stat().st_size,
        seconds=time.perf_counter() - start,
        warnings=[n for n in notes if not n.startswith(SIMPLIFIERS)],
        versions=_versions(),
    )


def reverified(result: ExportResult, model: nn.Module, out_path: str | Path, verify_inputs: np.ndarray | None = None, *,
               rtol: float = 1e-3, atol: float = 1e-4, ui: UI | None = None) -> ExportResult:
    """An earlier `export_onnx` of `model` (`result`), verified again on `verify_inputs` (real data
    the earlier export did not have) and written to `out_path` with that verification in its record.

    Why: a build exports the original once, early, for its latency table's context fit, and ships
    that file (a dynamo export of a ResNet-18 takes 3.5-5.5 s here); the data its export stage
    verifies on is loaded only later. Raises VerificationError above tolerance; writes nothing then."""
    start = time.perf_counter()
    out_path = Path(out_path)
    verification = result.verification
    with atomic_path(out_path) as tmp:
        if verify_inputs is None:  # nothing new to check it on: the file as it is
            shutil.copyfile(result.path, tmp)
        else:
            final = onnx.load(result.path)
            verification = verify_graph(model, final, verify_inputs, rtol=rtol, atol=atol, ui=ui, simplifier=result.simplifier)
            record = next((json.loads(p.value) for p in final.metadata_props if p.key == EXPORT_RECORD_KEY), {})
            _stamp(final, {**record, "verification": asdict(verification)})
            onnx.save_model(final, str(tmp), save_as_external_data=False)
    return replace(result, path=str(out_path), verification=verification, sha256=sha256_file(out_path), size_bytes=out_path.stat().st_size,
                   seconds=result.seconds + time.perf_counter() - start)
