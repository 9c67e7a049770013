"""optimum's ONNX exporter run on a model directory, the one way every Hugging Face export calls it."""

from __future__ import annotations

from exporter.onnx_file import check_onnx, save_with_external_data
from exporter.quiet import quiet_export
from runtimes.artifact import Artifact
from runtimes.pyt.loading import as_usage_error, hf_load_errors
def optimum_to_onnx(src: Artifact, tmp, optimum_task: str, *, opset: int | None, external_data: bool) -> dict:
    """``tmp/model.onnx`` from optimum's exporter (local files only, no validation of its own), weights
    moved to external data when asked, then checked; returns the checks.

    Raises:
        UsageError: transformers cannot load the model, or the ONNX check fails.
    """
    from optimum.exporters.onnx import main_export

    try:
        with quiet_export():
            main_export(str(src.path), tmp, task=optimum_task, opset=opset, library_name="transformers", device="cpu",
                        do_validation=False, trust_remote_code=False, local_files_only=True)
    except hf_load_errors() as e:
        raise as_usage_error(src.path, e) from None
    model_path = tmp / "model.onnx"
    if external_data:
        save_with_external_data(model_path)
    return check_onnx(model_path)
