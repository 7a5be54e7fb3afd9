"""Regenerate the Python stubs from the .proto files: ``python protos/generate.py`` (``make protos``).

The stubs are committed so installing tierwise needs no protoc; a test checks
they match the .proto. protoc writes imports rooted at the proto path
(``from tierwise.v1 import ...``), which is the installed import name as it is:
``protos/tierwise`` is the ``tierwise`` package, so the output needs no rewriting.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_FILES = ["tierwise/v1/tierwise.proto"]


def generate(out_dir: Path = HERE) -> list[Path]:
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = Path(protoc.__file__).resolve().parent / "_proto"
    bin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{HERE}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[str(HERE / f) for f in PROTO_FILES],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return sorted(out_dir.rglob("*_pb2*.py*"))


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
