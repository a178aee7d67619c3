"""Example models for fxopt, written in plain PyTorch (not installed with the package)."""
