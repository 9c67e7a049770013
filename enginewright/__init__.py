"""Enginewright: PyTorch models to fast, verified deployment artifacts.

The command line lives in :mod:`enginewright.cli`; the stages are the packages ``exporter``,
``runtimes`` and ``benchmarks``. Importing this package imports nothing heavy.
"""

__version__ = "0.1.0"
