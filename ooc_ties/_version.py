"""The package version, in a module of its own: the modules that record it import nothing else."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
"""Kept equal to ``[project] version`` in pyproject.toml (tests/test_imports.py checks it)."""
