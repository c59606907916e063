#!/usr/bin/env python3
"""radstream test oracle: independent numpy/pydicom/onnxruntime reference.

Subcommands:
  preprocess --manifest model.toml --out DIR FILE...
      Writes DIR/NNNN.f32 (raw little-endian float32, [C,H,W], C order) per frame and
      DIR/index.json = [{"file", "frame", "shape": [C,H,W], "path", "window"}, ...], where "window"
      is the window rule's choice for a monochrome frame's first channel ({"source":
      "manifest"|"file"|"min_max", "index", "file_window_invalid", "center", "width"}) and null for
      colour. [preprocess] window / windows (stacked as channels) and [preprocess.modality.<term>]
      (chosen by the dataset's Modality) are followed.
  score --manifest model.toml --out FILE.json FILE...
      Preprocesses all frames as one batch (transposed to NHWC when the manifest's [input] layout
      says so), runs the ONNX model with onnxruntime (CPU), applies the manifest's activation
      ([outputs] kind sigmoid/softmax), and
      writes [{"file", "frame", "scores": {label: p}, "map_peak": [row, col] | null}, ...].
      map_peak is the row-major argmax (first maximum) of the first label's map.

Pixel data comes from pydicom's ds.pixel_array (YBR converted to RGB).  Multi-frame
instances yield one entry per frame.  Nothing from the radstream crate is used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spec  # noqa: E402


def load_manifest(path):
    with open(path, "rb") as f:
        m = tomllib.load(f)
    inp = m["input"]
    pre = m.get("preprocess", {})
    channels = int(inp["channels"])

    def windows(table):
        """A table's `window` (one, every channel) or `windows` (stacked) as a list; [] if neither."""
        if table.get("window") is not None and table.get("windows") is not None:
            raise ValueError("window and windows are mutually exclusive")
        if table.get("window") is not None:
            return [(float(table["window"]["center"]), float(table["window"]["width"]))]
        return [(float(w["center"]), float(w["width"])) for w in table.get("windows") or []]

    mean = [float(x) for x in pre.get("mean", [0.0] * channels)]
    std = [float(x) for x in pre.get("std", [1.0] * channels)]
    return {
        "dir": os.path.dirname(os.path.abspath(path)),
        "model_file": m["model"]["file"],
        "input_name": inp.get("name", "image"),
        "channels": channels,
        "height": int(inp["height"]),
        "width": int(inp["width"]),
        "windows": windows(pre),
        # Per DICOM Modality defined term (upper case): replaces "windows" for that modality.
        "modality_windows": {k.strip().upper(): windows(v) for k, v in pre.get("modality", {}).items()},
        "mean": mean,
        "std": std,
        "scores_output": m.get("outputs", {}).get("scores", "scores"),
        "map_output": m.get("outputs", {}).get("map"),
        "labels": [lab["name"] for lab in m.get("labels", [])],
        "layout": inp.get("layout", "NCHW"),
        "kind": m.get("outputs", {}).get("kind", "probabilities"),
    }


def preprocess_file(path, man):
    import pydicom

    ds = pydicom.dcmread(path)
    p = spec.frame_params_from_dataset(ds)
    modality = str(ds.get("Modality", "") or "").strip().upper()
    manifest_windows = man["modality_windows"].get(modality, man["windows"])
    out = []
    for i, frame in enumerate(spec.frames_from_dataset(ds)):
        window = None
        if p["samples"] == 1:
            a = np.asarray(frame, dtype=np.float64)
            # The first channel's choice is the one reported.
            window = spec.choose_windows(
                a.min(), a.max(), p["slope"], p["intercept"], manifest_windows, p["file_windows"],
                man["channels"],
            )[0]
        t = spec.preprocess_frame(
            frame,
            photometric=p["photometric"],
            slope=p["slope"],
            intercept=p["intercept"],
            file_windows=p["file_windows"],
            manifest_windows=manifest_windows,
            bits_stored=p["bits_stored"],
            channels=man["channels"],
            height=man["height"],
            width=man["width"],
            mean=man["mean"],
            std=man["std"],
        )
        out.append((i, t, window))
    return out


def preprocess_all(files, man, skip_errors=False):
    entries, errors = [], []
    for f in files:
        try:
            for i, t, window in preprocess_file(f, man):
                entries.append((f, i, t, window))
        except Exception as e:  # noqa: BLE001
            if not skip_errors:
                raise SystemExit(f"oracle: {f}: {type(e).__name__}: {e}")
            errors.append({"file": f, "error": f"{type(e).__name__}: {e}"})
    return entries, errors


def cmd_preprocess(args):
    man = load_manifest(args.manifest)
    os.makedirs(args.out, exist_ok=True)
    entries, errors = preprocess_all(args.files, man, args.skip_errors)
    index = []
    for n, (f, i, t, window) in enumerate(entries):
        name = f"{n:04d}.f32"
        p = os.path.join(args.out, name)
        t.astype("<f4").tofile(p)
        index.append({"file": f, "frame": i, "shape": list(t.shape), "path": p, "window": window})
    index.extend(errors)
    with open(os.path.join(args.out, "index.json"), "w") as fh:
        json.dump(index, fh, indent=1)
    return 0


def cmd_score(args):
    import onnxruntime as ort

    man = load_manifest(args.manifest)
    entries, errors = preprocess_all(args.files, man, args.skip_errors)
    results = []
    if entries:
        batch = np.stack([t for _, _, t, _ in entries]).astype(np.float32)
        if man["layout"] == "NHWC":
            batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
        sess = ort.InferenceSession(
            os.path.join(man["dir"], man["model_file"]), providers=["CPUExecutionProvider"]
        )
        names = [man["scores_output"]] + ([man["map_output"]] if man["map_output"] else [])
        outs = sess.run(names, {man["input_name"]: batch})
        scores = np.asarray(outs[0], dtype=np.float64)
        # the manifest's activation, computed in float64 (radstream: float32)
        if man["kind"] == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-scores))
        elif man["kind"] == "softmax":
            e = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores = e / e.sum(axis=1, keepdims=True)
        maps = np.asarray(outs[1], dtype=np.float32) if man["map_output"] else None
        labels = man["labels"] or [f"label{k}" for k in range(scores.shape[1])]
        for n, (f, i, _, _) in enumerate(entries):
            peak = None
            if maps is not None:
                m0 = maps[n, 0]
                r, c = np.unravel_index(int(np.argmax(m0)), m0.shape)
                peak = [int(r), int(c)]
            results.append(
                {
                    "file": f,
                    "frame": i,
                    "scores": {lab: float(scores[n, k]) for k, lab in enumerate(labels)},
                    "map_peak": peak,
                }
            )
    results.extend(errors)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("preprocess", "score"):
        s = sub.add_parser(name)
        s.add_argument("--manifest", required=True)
        s.add_argument("--out", required=True)
        s.add_argument(
            "--skip-errors",
            action="store_true",
            help="record undecodable/unsupported files as {file, error} entries instead of failing",
        )
        s.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    return cmd_preprocess(args) if args.cmd == "preprocess" else cmd_score(args)


if __name__ == "__main__":
    sys.exit(main())
