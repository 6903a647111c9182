"""hadmc-deploy: a hardware-aware deployment compiler for PyTorch CNNs."""

__version__ = "0.1.0"
