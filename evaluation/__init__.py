"""Shared evaluation: data and feeds, padding-aware parity, task metrics, ``compare``, report files.

The layer between ``runtimes`` and ``exporter``: export validation, calibration, ``compare`` and
``bench`` all feed models and score them through it, so every stage does it the same way. Imports
``runtimes`` only, never ``exporter``, ``benchmarks`` or ``enginewright``.
"""
