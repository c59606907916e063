#!/usr/bin/env python3
"""A client of a secured radstream written with the reference gRPC stack (grpcio): TLS with the CA that
signed the service's certificate (optionally a client certificate for mutual TLS, or plain text), and a
bearer token per call.

    grpcio_secure.py --endpoint 127.0.0.1:PORT --proto-dir proto [--ca CA] [--cert C --key K]
                     [--plaintext] --steps '[{"action": "push", "token": "..."}, ...]' FILE...

Each step is one call on the same channel: `health` (grpc.health.v1 Check), `push` (one Analyze stream
with FILE...), `watch` (Studies.Watch replaying the log, replay_only) or `models` (Models.List). Prints one
JSON object per step: {"action", "code" (the gRPC status name, "OK" on success), "details", "count"}.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc


def generate_stubs(proto_dir, out_dir):
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        "radstream/v1/radstream.proto",
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, out_dir)
    return (importlib.import_module("radstream.v1.radstream_pb2"),
            importlib.import_module("radstream.v1.radstream_pb2_grpc"))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--plaintext", action="store_true")
    ap.add_argument("--steps", required=True)
    ap.add_argument("files", nargs="*")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc = generate_stubs(args.proto_dir, tmp)
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        if args.plaintext:
            channel = grpc.insecure_channel(args.endpoint, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=read(args.ca),
                private_key=read(args.key) if args.key else None,
                certificate_chain=read(args.cert) if args.cert else None,
            )
            # The test certificate names localhost; the server listens on 127.0.0.1.
            options.append(("grpc.ssl_target_name_override", "localhost"))
            channel = grpc.secure_channel(args.endpoint, creds, options=options)

        with channel:
            for step in json.loads(args.steps):
                metadata = [("authorization", "Bearer " + step["token"])] if step.get("token") else []
                action = step["action"]
                count = 0
                try:
                    if action == "health":
                        r = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(service=""), timeout=10, metadata=metadata)
                        count = r.status
                    elif action == "push":
                        def requests():
                            for path in args.files:
                                yield pb.AnalyzeRequest(instance=pb.Instance(
                                    dicom=read(path), client_ref=os.path.basename(path)))
                        for response in pb_grpc.AnalysisStub(channel).Analyze(
                                requests(), timeout=120, metadata=metadata):
                            if response.WhichOneof("event") == "accepted":
                                count += 1
                    elif action == "watch":
                        for _ in pb_grpc.StudiesStub(channel).Watch(
                                pb.WatchRequest(from_sequence=1, replay_only=True), timeout=30,
                                metadata=metadata):
                            count += 1
                    elif action == "models":
                        r = pb_grpc.ModelsStub(channel).List(
                            pb.ListModelsRequest(), timeout=30, metadata=metadata)
                        count = len(r.versions)
                    else:
                        raise SystemExit(f"unknown action {action}")
                    code, details = "OK", ""
                except grpc.RpcError as e:
                    code, details = e.code().name, e.details() or ""
                print(json.dumps({"action": action, "code": code, "details": details, "count": count}),
                      flush=True)


if __name__ == "__main__":
    main()
