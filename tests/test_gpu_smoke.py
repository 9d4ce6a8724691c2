"""benchmarks/gpu_smoke.py on the CPU, as CI runs it: every row passes or says it needs a GPU.

Each row is a command in its own process (a few seconds each on a shared CPU), so the quick
run still takes minutes here: marked slow (``pytest -m "not slow"`` leaves it out).
"""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"


@pytest.mark.slow
def test_the_gpu_smoke_run_passes_on_the_cpu(tmp_path, cli_environment):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        env=cli_environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split("  ")[0].strip(): line for line in result.stdout.splitlines()}
    for check in ("train bf16 + average", "resume bf16 + average", "eval torch", "predict whole"):
        assert check in rows and " 0 " in rows[check], result.stdout
    assert "skipped: no GPU" in rows["out of memory"]
    assert "from a model on cpu" in rows["export onnx"] or "not installed" in rows["export onnx"]
    assert (tmp_path / "run" / "last.pt").is_file() and list(
        (tmp_path / "masks-whole").glob("*.png")
    )
