"""The part of etcd's v3 gRPC API the etcd source speaks, as protobuf
messages: Range, Put, Watch and Authenticate.

The messages are declared here by name, number and type, as etcd's
``rpc.proto`` and ``kv.proto`` number them (a wire format etcd keeps
stable across versions), and built at import into a descriptor pool of
their own, so they decode in protobuf's C code and clash with no other
copy of etcd's schema a program may load.  Fields this client does not
read are left out: protobuf skips them.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "RangeRequest",
    "RangeResponse",
    "PutRequest",
    "PutResponse",
    "WatchRequest",
    "WatchCreateRequest",
    "WatchResponse",
    "AuthenticateRequest",
    "AuthenticateResponse",
    "DELETE",
    "RANGE",
    "PUT",
    "WATCH",
    "AUTHENTICATE",
]

RANGE = "/etcdserverpb.KV/Range"
PUT = "/etcdserverpb.KV/Put"
WATCH = "/etcdserverpb.Watch/Watch"
AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"

DELETE = 1  # mvccpb.Event.EventType (PUT is 0)

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bytes": _F.TYPE_BYTES,
    "string": _F.TYPE_STRING,
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
    "bool": _F.TYPE_BOOL,
    "enum": _F.TYPE_INT32,
}

# message -> [(field, number, type, repeated)]; a type not in _SCALARS
# names a message.  ("enum" fields are read as plain numbers.)
_SCHEMA = {
    "ResponseHeader": [
        ("cluster_id", 1, "uint64", False),
        ("member_id", 2, "uint64", False),
        ("revision", 3, "int64", False),
        ("raft_term", 4, "uint64", False),
    ],
    "KeyValue": [
        ("key", 1, "bytes", False),
        ("create_revision", 2, "int64", False),
        ("mod_revision", 3, "int64", False),
        ("version", 4, "int64", False),
        ("value", 5, "bytes", False),
        ("lease", 6, "int64", False),
    ],
    "Event": [
        ("type", 1, "enum", False),
        ("kv", 2, "KeyValue", False),
        ("prev_kv", 3, "KeyValue", False),
    ],
    "RangeRequest": [
        ("key", 1, "bytes", False),
        ("range_end", 2, "bytes", False),
        ("limit", 3, "int64", False),
        ("revision", 4, "int64", False),
        ("serializable", 7, "bool", False),
    ],
    "RangeResponse": [
        ("header", 1, "ResponseHeader", False),
        ("kvs", 2, "KeyValue", True),
        ("more", 3, "bool", False),
        ("count", 4, "int64", False),
    ],
    "PutRequest": [
        ("key", 1, "bytes", False),
        ("value", 2, "bytes", False),
        ("lease", 3, "int64", False),
    ],
    "PutResponse": [("header", 1, "ResponseHeader", False)],
    "WatchCreateRequest": [
        ("key", 1, "bytes", False),
        ("range_end", 2, "bytes", False),
        ("start_revision", 3, "int64", False),
        ("progress_notify", 4, "bool", False),
        ("prev_kv", 6, "bool", False),
    ],
    "WatchRequest": [("create_request", 1, "WatchCreateRequest", False)],
    "WatchResponse": [
        ("header", 1, "ResponseHeader", False),
        ("watch_id", 2, "int64", False),
        ("created", 3, "bool", False),
        ("canceled", 4, "bool", False),
        ("compact_revision", 5, "int64", False),
        ("cancel_reason", 6, "string", False),
        ("fragment", 7, "bool", False),
        ("events", 11, "Event", True),
    ],
    "AuthenticateRequest": [
        ("name", 1, "string", False),
        ("password", 2, "string", False),
    ],
    "AuthenticateResponse": [
        ("header", 1, "ResponseHeader", False),
        ("token", 2, "string", False),
    ],
}
_PACKAGE = "pyworker.etcd"


def _build():
    file = descriptor_pb2.FileDescriptorProto(
        name="pyworker/discovery/etcdwire.proto",
        package=_PACKAGE,
        syntax="proto3",
    )
    for name, fields in _SCHEMA.items():
        message = file.message_type.add(name=name)
        for field, number, kind, repeated in fields:
            f = message.field.add(
                name=field,
                number=number,
                json_name=field,
                label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL,
            )
            if kind in _SCALARS:
                f.type = _SCALARS[kind]
            else:
                f.type = _F.TYPE_MESSAGE
                f.type_name = f".{_PACKAGE}.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessages([file], pool=pool)


_classes = _build()
globals().update({name: _classes[f"{_PACKAGE}.{name}"] for name in _SCHEMA})
