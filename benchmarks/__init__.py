"""Benchmarks: throughput (``bench``), gates, ``inspect``/``env``, and the benchmark scripts
(``compression.py``, ``quantization.py``). Imports ``runtimes``, ``evaluation`` and ``exporter``,
never ``enginewright``."""
