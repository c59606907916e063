"""Seed corpora for the fuzz targets from pydicom's and pydicom-data's test files (see fuzz/README.md).

Usage: ~/.cache/radstream/venv/bin/python fuzz/make_seeds.py [OUT_DIR]   (default /tmp/fuzz-corpus)
Writes OUT_DIR/decode_instance/ (the Part-10 files of at most 64 KiB, as they are) and OUT_DIR/rle/ (the
RLE Lossless files' fragments in the `rle` target's input format, plus a few round-trip inputs).
The corpus stays outside the repository.
"""

import glob
import os
import random
import shutil
import struct
import sys

import pydicom
from pydicom.encaps import generate_fragmented_frames

MAX_SEED = 64 * 1024
out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/fuzz-corpus"
site = os.path.dirname(os.path.dirname(pydicom.__file__))
files = sorted(
    glob.glob(os.path.join(site, "pydicom/data/test_files/*.dcm"))
    + glob.glob(os.path.join(site, "data_store/data/**/*.dcm"), recursive=True)
)
dec, rle = os.path.join(out, "decode_instance"), os.path.join(out, "rle")
os.makedirs(dec, exist_ok=True)
os.makedirs(rle, exist_ok=True)
n_dec = n_rle = 0
for f in files:
    name = os.path.basename(f)
    if os.path.getsize(f) > MAX_SEED or os.path.exists(os.path.join(dec, name)):
        continue
    shutil.copy(f, os.path.join(dec, name))
    n_dec += 1
    try:
        ds = pydicom.dcmread(f)
        if ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.5":
            continue
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        frags = [b"".join(fr) for fr in generate_fragmented_frames(ds.PixelData, number_of_frames=frames)]
    except Exception as e:  # unreadable seeds are still decode_instance seeds
        print(f"{name}: no RLE seed ({e})", file=sys.stderr)
        continue
    # [mode 0 = decode][frames][rows u16][cols u16][samples][bytes per sample] then [len u32][fragment]...
    head = struct.pack(
        "<BBHHBB", 0, frames & 0xFF, ds.Rows & 0xFFFF, ds.Columns & 0xFFFF, ds.SamplesPerPixel, ds.BitsAllocated // 8
    )
    with open(os.path.join(rle, name + ".rle"), "wb") as w:
        w.write(head + b"".join(struct.pack("<I", len(x)) + x for x in frags))
    n_rle += 1
random.seed(1)
for i in range(8):  # round-trip mode (odd mode byte): the rest is pixel bytes
    head = bytes([1 | (i << 1), i, 7 + i, 0, 5 + 3 * i, 0, i, i])
    px = bytes(random.choice([0, 0, 0, 255, random.randrange(256)]) for _ in range(64 * (i + 1)))
    with open(os.path.join(rle, f"roundtrip{i}"), "wb") as w:
        w.write(head + px)
    n_rle += 1
print(f"{n_dec} decode_instance seeds in {dec}, {n_rle} rle seeds in {rle}")
