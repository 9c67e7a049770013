import subprocess
import sys

HEAVY = ("torch", "onnxruntime", "tensorrt", "transformers", "optimum", "onnx")


def test_importing_the_packages_and_cli_stays_light():
    code = (
        "import sys, runtimes, evaluation, exporter, benchmarks, enginewright.cli as c; c.build_parser();"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"heavy libraries imported at import time: {out}"


def test_runtimes_imports_neither_exporter_nor_benchmarks():
    code = "import sys, runtimes, runtimes.pyt.runner, runtimes.onnxrt.runner; print('exporter' in sys.modules or 'benchmarks' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
