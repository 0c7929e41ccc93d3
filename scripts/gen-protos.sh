#!/usr/bin/env bash
# Generate the Python stubs of every contract under protos/ into OUT_DIR/autopack/...
# (one package per folder). The one way stubs are made: `make protos` and every Dockerfile.
#   scripts/gen-protos.sh PYTHON OUT_DIR     (PYTHON must have grpcio-tools)
set -euo pipefail
python=${1:?usage: gen-protos.sh PYTHON OUT_DIR}
out=${2:?usage: gen-protos.sh PYTHON OUT_DIR}
protos="$(cd "$(dirname "$0")/.." && pwd)/protos"
rm -rf "$out/autopack"
mkdir -p "$out"
# shellcheck disable=SC2046 # one argument per proto file
"$python" -m grpc_tools.protoc -I"$protos" --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  $(find "$protos/autopack" -name '*.proto' | sort)
find "$out/autopack" -type d -exec touch {}/__init__.py \;
