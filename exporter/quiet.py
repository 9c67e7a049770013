"""Quiet the exporters: tracer warnings and library chatter hidden, errors still raised."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings


@contextlib.contextmanager
def quiet_export():
    """Hide tracer warnings and library chatter during export; errors still propagate."""
    loggers = [logging.getLogger(n) for n in ("transformers", "optimum", "torch.onnx", "onnxruntime.quantization")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)
