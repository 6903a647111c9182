"""Shared pytest setup: torch on few threads so parallel workers do not oversubscribe 2 cores; a cache of the run's own."""

import os
import tempfile

import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Measured tables (and the feedback builds leave in them) go to a cache of this test run, never
# into the user's: set before any build runs, inherited by the CLI subprocesses tests start.
os.environ.setdefault("HADMC_CACHE", tempfile.mkdtemp(prefix="hadmc-test-cache-"))

# Property tests draw the same examples on every run, so CI cannot flake on a new one.
from hypothesis import settings  # noqa: E402

settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")
