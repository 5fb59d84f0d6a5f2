"""The committed Pub/Sub stubs are exactly what the pinned generator makes of the proto."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "shared/pubsub_api.proto"
GENERATED = ("pubsub_api_pb2.py", "pubsub_api_pb2.pyi", "pubsub_api_pb2_grpc.py")


def test_regenerating_the_stubs_changes_nothing(tmp_path: Path):
    # Same relative layout as the repository, so the generated import lines match too.
    (tmp_path / "shared").mkdir()
    shutil.copy(ROOT / PROTO, tmp_path / PROTO)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            PROTO,
        ],
        cwd=tmp_path,
        check=True,
        timeout=60,
    )
    for name in GENERATED:
        fresh = (tmp_path / "shared" / name).read_text()
        assert fresh == (ROOT / "shared" / name).read_text(), f"shared/{name} is stale"


def test_the_stubs_import_on_the_installed_runtime():
    from shared import pubsub_api_pb2, pubsub_api_pb2_grpc

    assert pubsub_api_pb2.ReplayPreset.Value("CUSTOM") == 2
    assert hasattr(pubsub_api_pb2_grpc, "PubSubStub")
