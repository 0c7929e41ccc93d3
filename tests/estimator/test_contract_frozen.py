"""The released v1 estimator contract is frozen: the live proto may grow but never break.

The snapshot (protos/snapshots/autopack.estimator.v1.txtpb) is the released descriptor. The live
contract -- compiled from protos/ and as loaded from the generated stubs -- must keep every message,
field (number, name, type, cardinality, presence), enum value, RPC and streaming mode in it.
This is what lets the estimator be released on its own.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from autopack.estimator.v1 import estimator_pb2
from google.protobuf import descriptor_pb2, text_format

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = REPO / "protos" / "snapshots" / "autopack.estimator.v1.txtpb"
PROTO = "autopack/estimator/v1/estimator.proto"

FieldProto = descriptor_pb2.FieldDescriptorProto


def _load_snapshot_tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "update_snapshot", REPO / "protos/snapshots/update_snapshot.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_snapshot() -> descriptor_pb2.FileDescriptorProto:
    return text_format.Parse(SNAPSHOT.read_text(encoding="utf-8"), descriptor_pb2.FileDescriptorProto())


def _messages(
    file_proto: descriptor_pb2.FileDescriptorProto,
) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        found[name] = message
        for nested in message.nested_type:
            walk(name, nested)

    for message in file_proto.message_type:
        walk(file_proto.package, message)
    return found


def _enums(file_proto: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    found = {f"{file_proto.package}.{enum.name}": enum for enum in file_proto.enum_type}
    for name, message in _messages(file_proto).items():
        for enum in message.enum_type:
            found[f"{name}.{enum.name}"] = enum
    return found


def _oneof_name(message: descriptor_pb2.DescriptorProto, field: FieldProto) -> str:
    if not field.HasField("oneof_index") or field.proto3_optional:
        return ""
    return message.oneof_decl[field.oneof_index].name


def breaking_changes(
    old: descriptor_pb2.FileDescriptorProto, new: descriptor_pb2.FileDescriptorProto
) -> list[str]:
    """Every change from ``old`` to ``new`` that could break an existing client or server."""
    problems: list[str] = []
    if old.package != new.package:
        problems.append(f"package changed: {old.package} -> {new.package}")
    new_messages = _messages(new)
    for name, old_message in _messages(old).items():
        new_message = new_messages.get(name)
        if new_message is None:
            problems.append(f"message {name} removed")
            continue
        new_fields = {field.number: field for field in new_message.field}
        new_names = {field.name: field for field in new_message.field}
        for field in old_message.field:
            where = f"{name}.{field.name} (= {field.number})"
            current = new_fields.get(field.number)
            if current is None:
                moved = new_names.get(field.name)
                if moved is not None:
                    problems.append(f"{where} renumbered to {moved.number}")
                else:
                    problems.append(f"{where} removed")
                continue
            if current.name != field.name:
                problems.append(f"{where} renamed to {current.name}")
            if current.type != field.type or current.type_name != field.type_name:
                old_type = field.type_name or FieldProto.Type.Name(field.type)
                new_type = current.type_name or FieldProto.Type.Name(current.type)
                problems.append(f"{where} type changed: {old_type} -> {new_type}")
            if current.label != field.label:
                problems.append(
                    f"{where} cardinality changed: {FieldProto.Label.Name(field.label)} -> "
                    f"{FieldProto.Label.Name(current.label)}"
                )
            if current.proto3_optional != field.proto3_optional:
                problems.append(f"{where} presence changed (optional added or removed)")
            if _oneof_name(new_message, current) != _oneof_name(old_message, field):
                problems.append(f"{where} moved into or out of a oneof")
    new_enums = _enums(new)
    for name, old_enum in _enums(old).items():
        new_enum = new_enums.get(name)
        if new_enum is None:
            problems.append(f"enum {name} removed")
            continue
        values = {value.number: value.name for value in new_enum.value}
        for value in old_enum.value:
            if value.number not in values:
                problems.append(f"enum value {name}.{value.name} (= {value.number}) removed")
            elif values[value.number] != value.name:
                problems.append(
                    f"enum value {name}.{value.name} (= {value.number}) renamed to {values[value.number]}"
                )
    new_services = {service.name: service for service in new.service}
    for old_service in old.service:
        service = new_services.get(old_service.name)
        if service is None:
            problems.append(f"service {old_service.name} removed")
            continue
        methods = {method.name: method for method in service.method}
        for old_method in old_service.method:
            where = f"rpc {old_service.name}.{old_method.name}"
            method = methods.get(old_method.name)
            if method is None:
                problems.append(f"{where} removed")
                continue
            if (method.input_type, method.output_type) != (old_method.input_type, old_method.output_type):
                problems.append(f"{where} request or response type changed")
            if method.client_streaming != old_method.client_streaming:
                problems.append(f"{where} client streaming changed")
            if method.server_streaming != old_method.server_streaming:
                problems.append(f"{where} server streaming changed")
    return problems


def live_from_source() -> descriptor_pb2.FileDescriptorProto:
    return _load_snapshot_tool().compile_descriptor(PROTO)


def live_from_stubs() -> descriptor_pb2.FileDescriptorProto:
    file_proto = descriptor_pb2.FileDescriptorProto()
    estimator_pb2.DESCRIPTOR.CopyToProto(file_proto)
    return file_proto


def test_snapshot_exists_and_describes_the_estimator_v1_package() -> None:
    snapshot = load_snapshot()
    assert snapshot.package == "autopack.estimator.v1"
    assert [service.name for service in snapshot.service] == ["EstimatorService"]
    assert "Estimate" in {method.name for method in snapshot.service[0].method}


def test_proto_source_keeps_the_frozen_contract() -> None:
    assert breaking_changes(load_snapshot(), live_from_source()) == []


def test_generated_stubs_keep_the_frozen_contract() -> None:
    assert breaking_changes(load_snapshot(), live_from_stubs()) == []


def _mutated(mutate) -> descriptor_pb2.FileDescriptorProto:  # type: ignore[no-untyped-def]
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(load_snapshot())
    mutate(copy)
    return copy


def _message(file_proto: descriptor_pb2.FileDescriptorProto, name: str) -> descriptor_pb2.DescriptorProto:
    return next(m for m in file_proto.message_type if m.name == name)


def _field(file_proto: descriptor_pb2.FileDescriptorProto, message: str, field: str) -> FieldProto:
    return next(f for f in _message(file_proto, message).field if f.name == field)


def _method(
    file_proto: descriptor_pb2.FileDescriptorProto, name: str
) -> descriptor_pb2.MethodDescriptorProto:
    return next(m for m in file_proto.service[0].method if m.name == name)


def _remove_field(f: descriptor_pb2.FileDescriptorProto) -> None:
    message = _message(f, "EstimateRequest")
    keep = [field for field in message.field if field.name != "description"]
    del message.field[:]
    message.field.extend(keep)


def _remove_rpc(f: descriptor_pb2.FileDescriptorProto) -> None:
    keep = [m for m in f.service[0].method if m.name != "Escalate"]
    del f.service[0].method[:]
    f.service[0].method.extend(keep)


def _remove_enum_value(f: descriptor_pb2.FileDescriptorProto) -> None:
    enum = next(e for e in f.enum_type if e.name == "EscalationReason")
    del enum.value[-1]


def _remove_message(f: descriptor_pb2.FileDescriptorProto) -> None:
    keep = [m for m in f.message_type if m.name != "BreakdownItem"]
    del f.message_type[:]
    f.message_type.extend(keep)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_remove_field, "EstimateRequest.description (= 3) removed"),
        (
            lambda f: setattr(_field(f, "EstimateRequest", "description"), "number", 99),
            "EstimateRequest.description (= 3) renumbered to 99",
        ),
        (
            lambda f: setattr(
                _field(f, "EstimateResponse", "selected_budget"), "type", FieldProto.TYPE_INT64
            ),
            "selected_budget (= 3) type changed: TYPE_INT32 -> TYPE_INT64",
        ),
        (
            lambda f: setattr(
                _field(f, "EstimateRequest", "deliverables"), "label", FieldProto.LABEL_OPTIONAL
            ),
            "deliverables (= 6) cardinality changed",
        ),
        (
            lambda f: setattr(_field(f, "EstimateRequest", "phase_id"), "name", "phase"),
            "phase_id (= 2) renamed to phase",
        ),
        (_remove_rpc, "rpc EstimatorService.Escalate removed"),
        (
            lambda f: setattr(_method(f, "ImportTelemetry"), "client_streaming", False),
            "ImportTelemetry client streaming changed",
        ),
        (
            lambda f: setattr(_method(f, "ExportTelemetry"), "server_streaming", False),
            "ExportTelemetry server streaming changed",
        ),
        (
            lambda f: setattr(
                _method(f, "Estimate"), "output_type", ".autopack.estimator.v1.EscalateResponse"
            ),
            "Estimate request or response type changed",
        ),
        (_remove_enum_value, "INCOMPLETE_DELIVERABLES (= 3) removed"),
        (_remove_message, "message autopack.estimator.v1.BreakdownItem removed"),
        (lambda f: setattr(f, "package", "autopack.estimator.v2"), "package changed"),
    ],
)
def test_breaking_changes_are_detected(mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    problems = breaking_changes(load_snapshot(), _mutated(mutate))
    assert any(expected in problem for problem in problems), problems


def test_additions_are_allowed() -> None:
    def grow(f: descriptor_pb2.FileDescriptorProto) -> None:
        _message(f, "EstimateRequest").field.add(
            name="priority", number=50, label=FieldProto.LABEL_OPTIONAL, type=FieldProto.TYPE_INT32
        )
        f.message_type.add(name="NewThing")
        f.service[0].method.add(
            name="NewRpc",
            input_type=".autopack.estimator.v1.NewThing",
            output_type=".autopack.estimator.v1.NewThing",
        )
        next(e for e in f.enum_type if e.name == "ModelStatus").value.add(
            name="MODEL_STATUS_ARCHIVED", number=9
        )

    assert breaking_changes(load_snapshot(), _mutated(grow)) == []
