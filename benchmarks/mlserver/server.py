"""MLServer serving one of torchwire's bundled TorchScript models over v2 gRPC (runtime.py), with
`--batching`: adaptive batching at torchwire's settings (up to 32 rows, 1 ms). For side-by-side
benchmarks only (benchmarks/versus.py); it runs in a venv of its own (benchmarks/contender_venv.sh mlserver).

    python server.py --model mlp --grpc-port 8081 --http-port 8080 [--batching] [--parallel-workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--repository", type=Path, default=HERE.parents[1] / "models")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--batching", action="store_true", help="adaptive batching: 32 rows, 1 ms")
    parser.add_argument("--parallel-workers", type=int, default=0, help="0: inference on the main process")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="torchwire-mlserver-"))
    settings = {
        "host": "127.0.0.1",
        "grpc_port": args.grpc_port,
        "http_port": args.http_port,
        "metrics_port": 0,
        "metrics_endpoint": None,
        "parallel_workers": args.parallel_workers,
        "debug": False,
    }
    model = {
        "name": args.model,
        "implementation": "runtime.TorchScriptModel",
        "max_batch_size": 32 if args.batching else 0,
        "max_batch_time": 0.001 if args.batching else 0,
        "parameters": {"uri": str(args.repository / args.model / "1" / "model.pt")},
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps(model))
    os.environ["PYTHONPATH"] = str(HERE)
    mlserver = Path(sys.executable).parent / "mlserver"
    os.execv(str(mlserver), [str(mlserver), "start", str(folder)])


if __name__ == "__main__":
    main()
