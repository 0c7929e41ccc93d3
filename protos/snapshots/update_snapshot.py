"""Write the frozen descriptor snapshot of a released contract (run when releasing a new version).

    .venv/bin/python protos/snapshots/update_snapshot.py autopack/estimator/v1/estimator.proto

The snapshot is the proto's FileDescriptorProto compiled from source, without comments, in protobuf
text format (reviewable in diffs): ``protos/snapshots/autopack.estimator.v1.txtpb``. The contract
test compares the live proto with it and fails on any breaking change; additions are allowed and
do not require a new snapshot (refresh it on release so the additions become frozen too).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, text_format

PROTO_ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT_DIR = Path(__file__).resolve().parent


def compile_descriptor(relative_proto: str) -> descriptor_pb2.FileDescriptorProto:
    """Compile one proto under ``protos/`` with grpcio-tools' protoc and return its descriptor."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        include = Path(protoc.__file__).parent / "_proto"
        status = protoc.main(
            ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--descriptor_set_out={out}", relative_proto]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {relative_proto} (exit {status})")
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (file_proto,) = [f for f in descriptor_set.file if f.name == relative_proto]
    return file_proto


def snapshot_path(file_proto: descriptor_pb2.FileDescriptorProto) -> Path:
    return SNAPSHOT_DIR / f"{file_proto.package}.txtpb"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    file_proto = compile_descriptor(argv[1])
    path = snapshot_path(file_proto)
    header = f"# Frozen contract {file_proto.package} ({file_proto.name}); written by update_snapshot.py.\n"
    path.write_text(header + text_format.MessageToString(file_proto), encoding="utf-8")
    print(f"wrote {path.relative_to(PROTO_ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
