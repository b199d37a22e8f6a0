#!/usr/bin/env bash
# Set up benchmarks/.env: a separate environment for the comparison with the tools users would pick
# instead (loss-landscapes 3.0.6, pyhessian 0.1), and scipy for the float64 ARPACK reference of
# bench_curvature_vs_pyhessian.py. They are never dependencies of lightning-landscape.
#   bash benchmarks/setup_env.sh [BASE_PYTHON]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
base="${1:-${BASE_PYTHON:-python3}}"
env="$here/.env"
if [ ! -x "$env/bin/python" ]; then
  "$base" -m venv "$env"
fi
py="$env/bin/python"
if ! "$py" -c "import loss_landscapes, pyhessian, scipy, lightning_landscape" 2>/dev/null; then
  "$py" -m pip install --quiet --upgrade pip
  # torch first, pinned to the CPU build the project installs (scripts/install_torch.py picks it).
  "$py" -c "import torch" 2>/dev/null || "$py" -m pip install --quiet "torch==2.13.0" \
    || "$py" "$root/scripts/install_torch.py"
  "$py" -m pip install --quiet numpy scipy "loss-landscapes==3.0.6" "pyhessian==0.1"
  "$py" -m pip install --quiet -e "$root"
fi
echo "$py"
