#!/bin/sh
# A venv of its own for a server benchmarks/versus.py compares torchwire with: kserve or mlserver.
# Makes benchmarks/NAME/.venv with torch (CPU: scripts/install_torch.py tries PyTorch's CPU index
# first) and the pinned server, then prints the venv's python.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in
    kserve) pin="kserve==0.21.0" ;;
    mlserver) pin="mlserver==1.7.1" ;;
    *) echo "usage: $0 kserve|mlserver" >&2; exit 2 ;;
esac
venv="$here/$1/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >&2
"$venv/bin/python" "$here/../scripts/install_torch.py" >&2
"$venv/bin/python" -m pip install -q "$pin" >&2
echo "$venv/bin/python"
