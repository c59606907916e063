"""The peer of `radstream bench load --peer`: the same series through the Python pipeline a user would
write, and through raw onnxruntime on ready-made tensors. Run on demand, not in CI.

usage: pipeline.py --study DIR --model MODEL_DIR [--batch 16] [--json]

(a) pipeline: pydicom dcmread -> pixel_array -> rescale -> window (the manifest's window, else the
    file's first valid window, else min/max: tests/oracle/spec.py's rule, imported) -> bilinear resize
    (half-pixel centres) -> normalize -> onnxruntime session.run in batches of --batch.
    Timed: the whole process up to the last score (from the first line: imports and session creation
    included) and the in-loop part (first dcmread to the last batch's scores).
(b) raw onnxruntime: the tensors of (a), already in memory, run again in the same batches; only
    session.run is timed -> slices/s; and one bare inference of batch 1 (median of 30 runs).

Prints one JSON object (--json) or readable lines.
"""

import time

T_PROCESS = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tomllib  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# spec.py beside this file (as `radstream bench load --peer` writes it), else the repository's
sys.path[:0] = [HERE, os.path.join(HERE, "..", "..", "tests", "oracle")]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pydicom  # noqa: E402

import spec  # noqa: E402


def resize_bilinear(img, height, width):
    """Half-pixel bilinear resize (align_corners=False, no antialiasing), spec.py's taps."""
    y0, y1, fy = spec.resize_axis_taps(img.shape[0], height)
    x0, x1, fx = spec.resize_axis_taps(img.shape[1], width)
    fy = fy.astype(np.float32)[:, None]
    fx = fx.astype(np.float32)[None, :]
    rows = img[y0] * (1 - fy) + img[y1] * fy
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def preprocess(ds, manifest):
    inp, pre = manifest["input"], manifest["preprocess"]
    stored = ds.pixel_array
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    mw = pre.get("window")
    window = spec.choose_window(
        stored.min(), stored.max(), slope, intercept,
        None if mw is None else (mw["center"], mw["width"]),
        spec.file_windows_from_dataset(ds))
    c, w = window["center"], window["width"]
    v = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if w <= 1.0:
        y = (v > c - 0.5).astype(np.float32)
    else:
        y = np.clip((v - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        y = 1.0 - y
    y = resize_bilinear(y, int(inp["height"]), int(inp["width"]))
    y = (y - np.float32(pre["mean"][0])) / np.float32(pre["std"][0])
    channels = int(inp.get("channels", 1))
    return np.repeat(y[None], channels, axis=0).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", required=True, help="folder of the series' Part-10 files")
    ap.add_argument("--model", required=True, help="model directory (model.toml + ONNX file)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with open(os.path.join(args.model, "model.toml"), "rb") as f:
        manifest = tomllib.load(f)
    if manifest["input"].get("layout", "NCHW") != "NCHW" or manifest["input"].get("dtype", "float32") != "float32":
        sys.exit("the peer handles NCHW float32 models only")
    session = ort.InferenceSession(os.path.join(args.model, manifest["model"]["file"]),
                                   providers=["CPUExecutionProvider"])
    name = manifest["input"]["name"]
    scores = manifest["outputs"]["scores"]
    files = sorted(os.path.join(args.study, n) for n in os.listdir(args.study) if n.endswith(".dcm"))
    if not files:
        sys.exit(f"no .dcm files in {args.study}")

    # (a) the pipeline
    t0 = time.perf_counter()
    tensors, out = [], []
    for i in range(0, len(files), args.batch):
        batch = [preprocess(pydicom.dcmread(p), manifest) for p in files[i:i + args.batch]]
        x = np.stack(batch)
        out.append(session.run([scores], {name: x})[0])
        tensors.append(x)
    in_loop = time.perf_counter() - t0
    process = time.perf_counter() - T_PROCESS
    n = sum(len(o) for o in out)

    # (b) raw onnxruntime on the ready-made tensors
    session.run([scores], {name: tensors[0]})  # warm
    t0 = time.perf_counter()
    for x in tensors:
        session.run([scores], {name: x})
    raw = time.perf_counter() - t0
    one = tensors[0][:1]
    times = []
    for _ in range(30):
        t = time.perf_counter()
        session.run([scores], {name: one})
        times.append(time.perf_counter() - t)
    bare_ms = float(np.median(times) * 1e3)

    report = {
        "syntax": "",
        "slices": n,
        "batch": args.batch,
        "process_s": process,
        "in_loop_s": in_loop,
        "in_loop_slices_per_s": n / in_loop,
        "raw_ort_slices_per_s": n / raw,
        "bare_inference_ms": bare_ms,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
