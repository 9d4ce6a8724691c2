"""The machine a benchmark ran on, as its figures name it."""

from __future__ import annotations

import platform
import subprocess


def cpu_name() -> str:
    """``lscpu``'s model name (the processor's name where there is no lscpu)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "CPU"
    for line in text.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"
