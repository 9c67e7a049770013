"""Exporter: PyTorch / Hugging Face models to verified ONNX artifacts.

Heavy libraries (torch, optimum, onnx) are imported inside the functions that use them.
"""

from exporter.hf import export_hf
from exporter.module import export_module

__all__ = ["export_hf", "export_module"]
