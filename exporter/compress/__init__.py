"""Compression in PyTorch: one verb (:func:`compress`), one config object per technique."""

from exporter.compress.api import compress
from exporter.compress.distill import DistillConfig, LayerDropConfig
from exporter.compress.pruning import PruneConfig
from exporter.compress.qat import QATConfig
from exporter.compress.sparsity import Sparse24Config

__all__ = ["DistillConfig", "LayerDropConfig", "PruneConfig", "QATConfig", "Sparse24Config", "compress"]
