"""Regenerate the Python stubs from the .proto files: ``python -m protos.generate``.

The stubs are committed so installing tierwise needs no protoc; a test checks
they match the .proto. grpc_tools writes absolute imports rooted at the proto
path (``from tierwise.v1 import ...``); they are rewritten to live under the
``protos`` package.
"""

from __future__ import annotations

import re
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
    written = []
    for path in sorted(out_dir.rglob("*_pb2*.py*")):
        text = path.read_text()
        fixed = re.sub(r"^from tierwise\.v1 import", "from protos.tierwise.v1 import", text, flags=re.M)
        fixed = re.sub(r"^import tierwise\.v1\.", "import protos.tierwise.v1.", fixed, flags=re.M)
        path.write_text(fixed)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
