"""Install PyTorch into the current interpreter, picking the CPU build where no NVIDIA GPU is present.

PyPI's Linux torch wheels bundle CUDA (several GB). On a machine without a GPU we take the CPU build
from PyTorch's own index when it is reachable; otherwise plain pip (whatever the configured indexes
or local wheel folders offer). A torch that is already installed is left alone, so GPU users keep
theirs. Override the version with TORCH_VERSION=... (empty for "any").
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    return subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
        return True
    except Exception:
        return False


def main() -> int:
    if importlib.util.find_spec("torch") is not None:
        print("torch already installed; leaving it as it is")
        return 0
    version = os.environ.get("TORCH_VERSION", "2.13.0")
    spec = f"torch=={version}" if version else "torch>=2.2"
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    if has_nvidia_gpu():
        print(f"NVIDIA GPU found: installing {spec} (CUDA build) from PyPI")
        cmd = [*pip, spec]
    elif reachable(f"{CPU_INDEX}/torch/"):
        print(f"no NVIDIA GPU: installing {spec} (CPU build) from {CPU_INDEX}")
        cmd = [*pip, "--index-url", CPU_INDEX, "--extra-index-url", "https://pypi.org/simple", spec]
    else:
        print(f"no NVIDIA GPU and {CPU_INDEX} unreachable: installing {spec} with pip's configured indexes")
        cmd = [*pip, spec]
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
