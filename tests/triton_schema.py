"""Triton's own ModelConfig schema (model_config.proto), to parse the config.pbtxt files the tests write as Triton does.

Triton reads config.pbtxt with protobuf's TextFormat into `inference.ModelConfig`. NVIDIA's `tritonclient` wheel
ships protoc's output for that .proto (tritonclient/grpc/model_config_pb2.py), whose core is the serialized
FileDescriptorProto passed to `AddSerializedFile`. That literal is read out of the file (with `ast`, nothing of the
wheel is imported or installed) and built into a message class in a private descriptor pool: independent of the
protobuf release the gencode was made for (the wheel pins protobuf<7, this project runs 7) and of its
runtime-version check. Parsing then uses google.protobuf.text_format, as Triton's C++ TextFormat does.

    python tests/triton_schema.py      # fetch the wheel once into the cache
    model_config_class()               # the inference.ModelConfig message class
    parse_config(text)                 # config.pbtxt text -> a ModelConfig message (raises ParseError)

PKD_TEST_TRITONCLIENT names another tritonclient release. The cache is $PKD_TEST_CACHE/triton, else .cache/test/triton
in the repository. A failure to fetch raises `TritonSchemaError` with one line: these tests run in CI, they do not
skip.
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSION = os.environ.get("PKD_TEST_TRITONCLIENT", "2.73.0")
GENCODE = "tritonclient/grpc/model_config_pb2.py"


class TritonSchemaError(RuntimeError):
    """Triton's schema could not be prepared here (one line: what is missing)."""


def cache_root() -> Path:
    root = os.environ.get("PKD_TEST_CACHE")
    return (Path(root) if root else REPO / ".cache" / "test") / "triton"


def fetch_wheel() -> Path:
    """The tritonclient wheel, downloaded once (no dependencies, nothing installed)."""
    dest = cache_root() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    pattern = f"tritonclient-{VERSION}-*.whl"
    found = sorted(dest.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:", "-d",
               str(dest), f"tritonclient=={VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(dest.glob(pattern))
        if done.returncode or not found:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise TritonSchemaError(f"cannot download tritonclient=={VERSION} from the package index: {last}")
    return found[0]


def serialized_descriptor(wheel: Path) -> bytes:
    """The FileDescriptorProto of model_config.proto, as protoc embedded it in the wheel's gencode."""
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(GENCODE).decode("utf-8")
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, bytes)):
            return node.args[0].value
    raise TritonSchemaError(f"{wheel.name}: {GENCODE} holds no AddSerializedFile(b'...') call")


@functools.lru_cache(maxsize=1)
def model_config_class() -> type:
    """Triton's `inference.ModelConfig` message class, built from its descriptor in a private pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(serialized_descriptor(fetch_wheel())))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_config(text: str):
    """config.pbtxt text -> an inference.ModelConfig message; google.protobuf.text_format.ParseError when Triton
    could not read it either."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_class()())


if __name__ == "__main__":
    try:
        fields = model_config_class().DESCRIPTOR.fields_by_name
        print(f"tritonclient {VERSION}: inference.ModelConfig ready ({len(fields)} fields) from {fetch_wheel()}")
    except TritonSchemaError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
