"""Shared pytest setup: torch on few threads so parallel workers do not oversubscribe 2 cores; a cache of the run's own."""

import atexit
import os
import shutil
import tempfile

import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Measured tables (and the feedback builds leave in them) go to a cache of this test run, never
# into the user's: set before any build runs, inherited by the CLI subprocesses tests start.
# Removed when the process exits (each xdist worker makes its own): left behind, 255 runs had
# filled /tmp with 2 GB of them.
if "HADMC_CACHE" not in os.environ:
    os.environ["HADMC_CACHE"] = tempfile.mkdtemp(prefix="hadmc-test-cache-")
    atexit.register(shutil.rmtree, os.environ["HADMC_CACHE"], ignore_errors=True)

# Property tests draw the same examples on every run, so CI cannot flake on a new one.
from hypothesis import settings  # noqa: E402

settings.register_profile("deterministic", derandomize=True)
settings.load_profile("deterministic")
