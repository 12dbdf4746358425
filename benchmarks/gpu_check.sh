#!/usr/bin/env bash
# GPU check (issue #9): a short DDP `elta train` over all visible GPUs and a throughput table,
# written to benchmarks/results/ (or --out FILE). Options: benchmarks/gpu_check.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py "$@"
