#!/bin/sh
# A venv of its own with MLServer and torch (CPU), for benchmarks/versus.py. Prints the venv's
# python. Tries PyTorch's CPU index first, as scripts/install_torch.py does.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >&2
"$venv/bin/python" "$here/../../scripts/install_torch.py" >&2
"$venv/bin/python" -m pip install -q "mlserver==1.7.*" >&2
echo "$venv/bin/python"
