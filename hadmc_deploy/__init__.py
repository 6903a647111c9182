"""hadmc-deploy: a hardware-aware deployment compiler for PyTorch CNNs."""

from hadmc_deploy.hugepages import avoid_huge_page_faults

avoid_huge_page_faults()  # before anything imports NumPy (hadmc_deploy/hugepages.py)

__version__ = "0.1.0"
