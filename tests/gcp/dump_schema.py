"""Dump the Compute Engine v1 wire schema from google-cloud-cli's generated client as JSON.

Used only by the GCP contract tests: the fake Compute Engine server checks every request
against this. Run with the SDK's lib directory on sys.path; writes JSON to stdout.
Nothing from the SDK is committed; this reads it at test time.
"""
import inspect
import json
import sys

from apitools.base.protorpclite import messages as pm
from googlecloudsdk.generated_clients.apis.compute.v1 import compute_v1_client as client
from googlecloudsdk.generated_clients.apis.compute.v1 import compute_v1_messages as msgs

VARIANT_KIND = {
    pm.Variant.INT64: "int64",
    pm.Variant.UINT64: "uint64",
    pm.Variant.SINT64: "int64",
    pm.Variant.INT32: "int32",
    pm.Variant.UINT32: "uint32",
    pm.Variant.SINT32: "int32",
    pm.Variant.DOUBLE: "double",
    pm.Variant.FLOAT: "double",
}


def message_name(cls):
    return cls.definition_name().split(".", 1)[-1] if "." in cls.definition_name() else cls.__name__


def field_kind(f):
    if isinstance(f, pm.MessageField):
        return {"kind": "message", "type": qualified(f.message_type)}
    if isinstance(f, pm.EnumField):
        return {"kind": "enum", "values": sorted(f.type.names())}
    if isinstance(f, pm.BooleanField):
        return {"kind": "bool"}
    if isinstance(f, pm.StringField):
        return {"kind": "string"}
    if isinstance(f, pm.BytesField):
        return {"kind": "bytes"}
    if isinstance(f, pm.IntegerField):
        return {"kind": VARIANT_KIND.get(f.variant, "int64")}
    if isinstance(f, pm.FloatField):
        return {"kind": "double"}
    return {"kind": "any"}


def qualified(cls):
    # Nested classes (e.g. Instance.LabelsValue) are keyed by their dotted path.
    return cls.__qualname__


messages = {}


def walk(cls):
    key = qualified(cls)
    if key in messages:
        return
    fields = {}
    messages[key] = {"fields": fields}
    for f in cls.all_fields():
        d = field_kind(f)
        d["repeated"] = bool(f.repeated)
        d["required"] = bool(f.required)
        fields[f.name] = d
        if isinstance(f, pm.MessageField):
            walk(f.message_type)
    # apitools maps: a single repeated `additionalProperties` of {key, value}.
    names = [f.name for f in cls.all_fields()]
    if names == ["additionalProperties"]:
        item = cls.field_by_name("additionalProperties").message_type
        value = item.field_by_name("value")
        messages[key]["map_value"] = dict(field_kind(value), repeated=bool(value.repeated))


for name, cls in inspect.getmembers(msgs, inspect.isclass):
    if issubclass(cls, pm.Message) and cls is not pm.Message:
        walk(cls)

methods = []
for name, svc in inspect.getmembers(client.ComputeV1, inspect.isclass):
    if not name.endswith("Service"):
        continue
    for attr, fn in vars(svc).items():
        cfg = getattr(fn, "method_config", None)
        if cfg is None:
            continue
        info = cfg()
        methods.append({
            "id": info.method_id,
            "http_method": info.http_method,
            "path": info.relative_path,
            "path_params": list(info.path_params),
            "query_params": list(info.query_params),
            "request_type": info.request_type_name,
            "request_field": info.request_field or None,
            "response_type": info.response_type_name,
        })

json.dump({"base_url": client.ComputeV1.BASE_URL, "methods": methods, "messages": messages},
          sys.stdout, sort_keys=True)
