"""Benchmarks: parity (``compare``) and throughput (``bench``) across runtimes, with the shared data
loading and parity metrics that ``exporter`` also uses. Imports ``runtimes``, never ``exporter``."""
