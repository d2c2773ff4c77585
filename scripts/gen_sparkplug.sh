#!/usr/bin/env bash
# Regenerate plugins/sparkplug/sparkplug_b_pb2.py (and its .pyi) from sparkplug_b.proto with
# grpcio-tools' bundled protoc (a test dependency). tests/test_sparkplug_schema.py runs the same
# command into a temporary folder and fails if the checked-in files differ.
#   .venv/bin/pip install grpcio-tools && bash scripts/gen_sparkplug.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
"$python" -m grpc_tools.protoc --proto_path=plugins/sparkplug \
    --python_out=plugins/sparkplug --pyi_out=plugins/sparkplug plugins/sparkplug/sparkplug_b.proto
