"""Shared pytest setup: keep torch on few threads so parallel workers do not oversubscribe 2 cores."""

import os

import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Property tests draw the same examples on every run, so CI cannot flake on a new one.
from hypothesis import settings  # noqa: E402

settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")
