"""Reference architectures used by the demo, the benchmarks and the tests.

Users pass their own with `--arch`; these exist so that every number in docs/
can be reproduced without torchvision or downloaded weights.
"""
