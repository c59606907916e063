#!/usr/bin/env python3
"""Reads radstream's `--json` lines with the reference protobuf library, as a tool that speaks proto3
JSON would: Python stubs are generated from proto/ with grpc_tools.protoc, each line is parsed with
google.protobuf.json_format.Parse (strict: an unknown key or a wrongly typed value is an error) into the
message it claims to be.

    proto_json_reader.py --proto-dir proto < lines

Input: one `MessageName<TAB>json` per line. Output: per input line, the message's binary encoding
(deterministic) in hex, so the caller can compare it with the message the service sent. The line must
also be exactly what json_format itself prints (proto field names kept), compared as parsed JSON: the
proof that it is the canonical mapping and not merely one the parser tolerates.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpcio_client import generate_stubs  # noqa: E402

from google.protobuf import json_format  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto-dir", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pb, _ = generate_stubs(args.proto_dir, tmp)
        for n, line in enumerate(sys.stdin, 1):
            name, _, text = line.rstrip("\n").partition("\t")
            message = getattr(pb, name)()
            json_format.Parse(text, message)
            printed = json_format.MessageToDict(message, preserving_proto_field_name=True)
            if printed != json.loads(text):
                raise SystemExit(
                    f"line {n}: not canonical proto3 JSON\n ours:     {text}\n protobuf: {json.dumps(printed)}")
            print(message.SerializeToString(deterministic=True).hex(), flush=True)


if __name__ == "__main__":
    main()
