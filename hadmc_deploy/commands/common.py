"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse

from hadmc_deploy.errors import UsageError
from hadmc_deploy.loading import LoadedModel, load_model, parse_arch_kwargs

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)


def parse_shape(text: str | None, what: str = "--input-shape") -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError as exc:
        raise UsageError(f"{what} {text!r} is not a comma-separated list of integers", hint="e.g. 1,3,224,224") from exc
    if len(shape) != 4 or any(d < 1 for d in shape):
        raise UsageError(f"{what} {text!r} must be four positive integers N,C,H,W", hint="e.g. 1,3,224,224")
    return shape


def load_from_args(args: argparse.Namespace, model_attr: str = "model") -> LoadedModel:
    path = getattr(args, model_attr, None)
    return load_model(path, args.arch, parse_arch_kwargs(args.arch_kwargs), trust_model=args.trust_model)


def input_shape_for(args: argparse.Namespace, loaded: LoadedModel | None = None) -> tuple[int, ...]:
    """--input-shape, else what the checkpoint recorded, else the ImageNet default."""
    shape = parse_shape(args.input_shape)
    if shape is not None:
        return shape
    if loaded is not None:
        recorded = loaded.info.get("input_shape")
        if isinstance(recorded, (list, tuple)) and len(recorded) == 4:
            return tuple(int(d) for d in recorded)
    return DEFAULT_INPUT_SHAPE


def add_model_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "model",
        nargs=None if required else "?",
        metavar="MODEL",
        help="a state_dict or checkpoint (.pth/.pt) with --arch, a pruned checkpoint written by hadmc-deploy, "
        "or a pickled nn.Module with --trust-model",
    )
