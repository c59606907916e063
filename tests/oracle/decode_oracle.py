#!/usr/bin/env python3
"""Decode oracle for radstream's DICOM decode stage.

Usage: python decode_oracle.py OUTDIR [TEST_FILES_DIR]

Walks pydicom's bundled ``data/test_files`` directory (never the network:
``get_testdata_file`` may download, so it is not used), decodes every file with
pydicom 3 (``ds.pixel_array`` with its defaults: YBR_* converted to RGB, values
masked to Bits Stored and sign-extended per Pixel Representation) and writes

  OUTDIR/index.json   list of per-file records (see ``record`` below)
  OUTDIR/raw/<n>.f32  the pixel array as float32 little-endian, C order,
                      shape frames x rows x cols x samples

No patient identifiers are written.
"""
import hashlib
import json
import os
import sys
import traceback

import numpy as np
import pydicom
from pydicom.uid import UID


def test_files_dir():
    return os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


def as_int(v, default=None):
    try:
        return int(v)
    except Exception:
        return default


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    root = sys.argv[2] if len(sys.argv) > 2 else test_files_dir()
    raw_dir = os.path.join(out, "raw")
    os.makedirs(raw_dir, exist_ok=True)

    paths = []
    for d, _, files in os.walk(root):
        for f in files:
            paths.append(os.path.join(d, f))
    paths.sort()

    records = []
    for i, path in enumerate(paths):
        name = os.path.relpath(path, root)
        rec = {
            "name": name,
            "path": os.path.abspath(path),
            "status": "error",
            "stage": None,
            "reason": None,
            "transfer_syntax": None,
            "transfer_syntax_name": None,
            "rows": None,
            "cols": None,
            "frames": None,
            "samples": None,
            "photometric": None,
            "bits_allocated": None,
            "bits_stored": None,
            "pixel_representation": None,
            "sop_instance_uid": None,
            "dtype": None,
            "sha256": None,
            "raw": None,
        }
        records.append(rec)
        try:
            ds = pydicom.dcmread(path)
        except Exception as e:  # noqa: BLE001 - recording why pydicom refused it
            rec["stage"] = "read"
            rec["reason"] = f"{type(e).__name__}: {e}"[:300]
            continue
        try:
            fm = getattr(ds, "file_meta", None)
            ts = getattr(fm, "TransferSyntaxUID", None) if fm is not None else None
            if ts is not None:
                rec["transfer_syntax"] = str(ts)
                rec["transfer_syntax_name"] = UID(ts).name
            rec["sop_instance_uid"] = str(ds.get("SOPInstanceUID", "")) or None
            rec["photometric"] = str(ds.get("PhotometricInterpretation", "")) or None
            rec["bits_allocated"] = as_int(ds.get("BitsAllocated"))
            rec["bits_stored"] = as_int(ds.get("BitsStored"))
            rec["pixel_representation"] = as_int(ds.get("PixelRepresentation"))
            if "PixelData" not in ds:
                rec["stage"] = "no_pixels"
                rec["reason"] = "no Pixel Data (7FE0,0010)"
                continue
            rows = as_int(ds.Rows)
            cols = as_int(ds.Columns)
            frames = as_int(ds.get("NumberOfFrames", 1), 1) or 1
            samples = as_int(ds.get("SamplesPerPixel", 1), 1)
            arr = ds.pixel_array
            rec["dtype"] = str(arr.dtype)
            arr = np.ascontiguousarray(arr.reshape(frames, rows, cols, samples), dtype="<f4")
        except Exception as e:  # noqa: BLE001
            rec["stage"] = "pixels"
            rec["reason"] = f"{type(e).__name__}: {e}"[:300]
            continue
        rec.update(rows=rows, cols=cols, frames=frames, samples=samples)
        data = arr.tobytes(order="C")
        rec["sha256"] = hashlib.sha256(data).hexdigest()
        raw = os.path.join(raw_dir, f"{i:04d}.f32")
        with open(raw, "wb") as fh:
            fh.write(data)
        rec["raw"] = os.path.abspath(raw)
        rec["status"] = "ok"

    with open(os.path.join(out, "index.json"), "w") as fh:
        json.dump(records, fh, indent=1)
    ok = sum(r["status"] == "ok" for r in records)
    print(f"{len(records)} files, {ok} decoded, {len(records) - ok} errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
