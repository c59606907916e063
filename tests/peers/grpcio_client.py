#!/usr/bin/env python3
"""A PACS-side client written against the published proto with the reference gRPC stack (grpcio), not
with radstream's own generated code: it proves the API works for an integrator in another language.

    grpcio_client.py --endpoint 127.0.0.1:50051 --proto-dir proto FILE...

Generates Python stubs from proto/ with grpc_tools.protoc into a temporary folder, checks
grpc.health.v1 for radstream.v1.Analysis, streams the files over one Analyze call, closes its side, and
prints every response as one JSON object per line.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from google.protobuf import json_format
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc = generate_stubs(args.proto_dir, tmp)
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(args.endpoint, options=options) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="radstream.v1.Analysis"), timeout=30)
            print(json.dumps({"type": "health", "status": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}),
                  flush=True)

            def requests():
                for path in args.files:
                    with open(path, "rb") as f:
                        yield pb.AnalyzeRequest(instance=pb.Instance(dicom=f.read(), client_ref=os.path.basename(path)))

            stub = pb_grpc.AnalysisStub(channel)
            for response in stub.Analyze(requests(), timeout=300):
                kind = response.WhichOneof("event")
                body = json_format.MessageToDict(getattr(response, kind), preserving_proto_field_name=True)
                print(json.dumps({"type": kind, **body}), flush=True)


if __name__ == "__main__":
    main()
