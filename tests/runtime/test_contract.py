"""The contract in protos/: generated code is fresh, buf-style names. That every message, field, enum value,
oneof and rpc has a comment is `buf lint` (protos/buf.yaml: STANDARD + COMMENTS), run by the TypeScript
client's CI (clients/typescript/scripts/ci, `npm run lint:protos`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from archivetag.v1 import common_pb2, errors_pb2, tagger_pb2, tagging_pb2, view_type_pb2

REPO = Path(__file__).resolve().parents[2]
PROTOS = sorted((REPO / "protos" / "archivetag" / "v1").glob("*.proto"))
MODULES = (common_pb2, errors_pb2, tagger_pb2, tagging_pb2, view_type_pb2)


def test_generated_code_is_not_stale():
    result = subprocess.run([sys.executable, "-m", "archivetag.protogen", "--check"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_staleness_check_notices_a_changed_proto(tmp_path, monkeypatch):
    from archivetag import protogen

    copy = tmp_path / "protos"
    (copy / "archivetag" / "v1").mkdir(parents=True)
    for proto in PROTOS:
        text = proto.read_text()
        if proto.name == "common.proto":
            text = text.replace("  string region = 3;", "  string region = 3;\n  // New.\n  string town = 4;")
        (copy / "archivetag" / "v1" / proto.name).write_text(text)
    monkeypatch.setattr(protogen, "PROTO_ROOT", copy)
    assert "common_pb2.py" in protogen.stale_files()


def test_package_is_versioned_and_services_follow_buf_style():
    for module in MODULES:
        assert module.DESCRIPTOR.package == "archivetag.v1"
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.name.endswith("Service")
            for method in service.methods:
                inputs = {method.input_type.name, method.output_type.name}
                assert inputs <= {
                    f"{method.name}Request", f"{method.name}Response",
                    f"{service.name}{method.name}Request", f"{service.name}{method.name}Response",
                }, (service.name, method.name, inputs)
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper()
            assert enum.values[0].name == f"{prefix}_UNSPECIFIED"
            assert all(v.name.startswith(prefix + "_") for v in enum.values)


def test_request_and_response_types_are_not_shared_between_rpcs():
    seen = {}
    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                for message in (method.input_type.full_name, method.output_type.full_name):
                    assert message not in seen, f"{message} used by {seen.get(message)} and {method.full_name}"
                    seen[message] = method.full_name
