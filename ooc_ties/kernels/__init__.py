"""Numba kernels, each beside its plain-NumPy oracle."""
