"""Independent numpy implementation of the radstream preprocessing specification.

This module is the Python reference ("oracle") for the preprocessing that the Rust CPU
path and the WGSL shader implement.  It is also imported by models/lesion-demo/train.py so
the model is trained on exactly the tensors the service produces.

Specification (per output pixel of a [C, H, W] tensor):
  1. monochrome: v = stored * slope + intercept; window per output channel k (the manifest's windows
     for the slice's Modality if [preprocess.modality.<term>] has them, else its default `window` (every
     channel) or `windows` (window k for channel k, stacked as channels), else the file's first VALID
     WindowCenter/WindowWidth pair -- finite centre, finite width >= 1, PS3.3 C.11.2.1.2 -- else
     rescaled min/max with c = (lo+hi)/2 + 0.5, w = hi - lo + 1); DICOM PS3.3 C.11.2.1.2.1 linear
     function to [0, 1]; MONOCHROME1 -> 1 - y.
     RGB: y_k = clamp(stored_k / (2^bits_stored - 1), 0, 1); no window applies.
  2. channel mapping (mono->C: channel k windowed with window k, one window: replicate;
     RGB->1: 0.299 R + 0.587 G + 0.114 B).
     Steps 1-2 are applied to every bilinear tap BEFORE interpolation.
  3. bilinear resize, half-pixel centres (align_corners=False, no antialiasing), source
     coordinates clamped to [0, n-1].
  4. normalize (x - mean[c]) / std[c].

2.5D models ([input] context = k, C = 2k+1; see preprocess_stack): the input of a slice is the 2k+1
neighbouring slices of its series in slice order (edges replicated by the caller); channel c is frame c
alone through steps 1, 3 and 4 (its own rescale, photometric and size), every channel windowed with the
window the rule chooses for the CENTRE frame (one window per input). Colour frames cannot be stacked.

Arithmetic is carried out in float64 and the result is rounded to float32 once at the end.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MAX_FILE_WINDOWS",
    "window_is_valid",
    "choose_window",
    "choose_windows",
    "frame_window",
    "apply_window",
    "map_values",
    "resize_axis_taps",
    "preprocess_frame",
    "preprocess_stack",
    "frames_from_dataset",
    "frame_params_from_dataset",
]


# Window pairs read from a file beyond this many are ignored (as the service does).
MAX_FILE_WINDOWS = 16


def window_is_valid(center, width):
    """PS3.3 C.11.2.1.2: a window needs a finite centre and a finite width >= 1."""
    c, w = float(center), float(width)
    return bool(np.isfinite(c) and np.isfinite(w) and w >= 1.0)


def choose_window(stored_min, stored_max, slope=1.0, intercept=0.0, manifest_window=None, file_windows=()):
    """The window rule: manifest > the file's first valid pair > rescaled min/max.

    file_windows: the file's (center, width) pairs in order, invalid ones included.
    Returns {"source": "manifest"|"file"|"min_max", "index": k|None, "file_window_invalid": bool,
             "center": c, "width": w}.
    """
    if manifest_window is not None:
        return {"source": "manifest", "index": None, "file_window_invalid": False,
                "center": float(manifest_window[0]), "width": float(manifest_window[1])}
    pairs = list(file_windows or ())
    for k, (c, w) in enumerate(pairs):
        if window_is_valid(c, w):
            return {"source": "file", "index": k, "file_window_invalid": k > 0,
                    "center": float(c), "width": float(w)}
    a = float(stored_min) * float(slope) + float(intercept)
    b = float(stored_max) * float(slope) + float(intercept)
    lo, hi = min(a, b), max(a, b)
    return {"source": "min_max", "index": None, "file_window_invalid": len(pairs) > 0,
            "center": (lo + hi) / 2.0 + 0.5, "width": hi - lo + 1.0}


def choose_windows(stored_min, stored_max, slope=1.0, intercept=0.0, manifest_windows=None,
                   file_windows=(), channels=1):
    """One window choice per output channel (see choose_window for the entries).

    manifest_windows: None/[] (the file's rule, replicated), one (center, width) (replicated), or one
    per channel (stacked: channel k gets window k).
    """
    ws = list(manifest_windows or ())
    if not ws:
        return [choose_window(stored_min, stored_max, slope, intercept, None, file_windows)] * channels
    if len(ws) not in (1, channels):
        raise ValueError(f"{len(ws)} manifest windows for {channels} channels")
    return [choose_window(stored_min, stored_max, slope, intercept, ws[min(k, len(ws) - 1)], file_windows)
            for k in range(channels)]


def frame_window(stored_min, stored_max, slope=1.0, intercept=0.0, manifest_window=None, file_windows=()):
    """Return (center, width) according to the precedence manifest > first valid file pair > min/max."""
    w = choose_window(stored_min, stored_max, slope, intercept, manifest_window, file_windows)
    return w["center"], w["width"]


def apply_window(v, center, width):
    """DICOM linear VOI function, output in [0, 1] (v: rescaled values, float64 array)."""
    v = np.asarray(v, dtype=np.float64)
    c = float(center)
    w = float(width)
    if w <= 1.0:
        return (v > c - 0.5).astype(np.float64)
    return np.clip((v - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)


def map_values(taps, *, samples, photometric, slope, intercept, window, bits_stored, channels):
    """Steps 1-2 applied to an array of taps.

    taps: float64 array [..., samples] of stored values.
    Returns float64 array [..., channels] of values in [0, 1].
    """
    if samples == 1:
        if channels not in (1, 3):
            raise ValueError(f"unsupported channel count {channels}")
        v = taps[..., 0] * float(slope) + float(intercept)
        # `window`: one (center, width) for every channel, or a list of one per channel.
        ws = list(window) if isinstance(window[0], (tuple, list)) else [window]
        if len(ws) not in (1, channels):
            raise ValueError(f"{len(ws)} windows for {channels} channels")
        ys = []
        for k in range(channels):
            c, w = ws[min(k, len(ws) - 1)]
            y = apply_window(v, c, w)
            if photometric == "MONOCHROME1":
                y = 1.0 - y
            ys.append(y)
        return np.stack(ys, axis=-1)
    if samples == 3:
        maxv = float(2 ** int(bits_stored) - 1)
        y = np.clip(taps / maxv, 0.0, 1.0)
        if channels == 3:
            return y
        if channels == 1:
            return (0.299 * y[..., 0] + 0.587 * y[..., 1] + 0.114 * y[..., 2])[..., None]
        raise ValueError(f"unsupported channel count {channels}")
    raise ValueError(f"unsupported samples per pixel {samples}")


def resize_axis_taps(n_in, n_out):
    """Half-pixel bilinear taps along one axis: (i0, i1, f) arrays of length n_out."""
    scale = float(n_in) / float(n_out)
    s = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    s = np.clip(s, 0.0, float(n_in - 1))
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    f = s - i0
    return i0, i1, f


def preprocess_frame(
    stored,
    *,
    photometric="MONOCHROME2",
    slope=1.0,
    intercept=0.0,
    file_windows=(),
    file_window=None,
    manifest_window=None,
    manifest_windows=None,
    bits_stored=16,
    channels=1,
    height=64,
    width=64,
    mean=(0.0,),
    std=(1.0,),
    stored_min=None,
    stored_max=None,
):
    """Preprocess one frame.

    stored: array [rows, cols] (samples = 1) or [rows, cols, 3] (samples = 3) of stored values
            (for colour data: already converted to RGB).
    file_windows: the file's (center, width) pairs in order, invalid ones included.
    file_window: one (center, width) pair, for callers that hold a single window (appended to
                 file_windows).
    manifest_window: one fixed window for every channel; manifest_windows: a list of them, one per
                     channel (stacked) or one; at most one of the two.
    stored_min/stored_max: override the frame min/max (default: computed from `stored`).
    Returns float32 array [channels, height, width].
    """
    a = np.asarray(stored, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"unexpected frame shape {np.shape(stored)}")
    rows, cols, samples = a.shape
    if samples == 1:
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError(f"unsupported photometric interpretation {photometric!r} for 1 sample")
        mn = float(a.min()) if stored_min is None else float(stored_min)
        mx = float(a.max()) if stored_max is None else float(stored_max)
        pairs = list(file_windows or ()) + ([] if file_window is None else [tuple(file_window)])
        if manifest_window is not None and manifest_windows:
            raise ValueError("manifest_window and manifest_windows are mutually exclusive")
        ws = list(manifest_windows or ()) or ([] if manifest_window is None else [manifest_window])
        window = [(w["center"], w["width"])
                  for w in choose_windows(mn, mx, slope, intercept, ws, pairs, channels)]
    else:
        window = None

    y0, y1, fy = resize_axis_taps(rows, height)
    x0, x1, fx = resize_axis_taps(cols, width)

    def tap(yi, xi):
        t = a[yi[:, None], xi[None, :], :]  # [H, W, samples]
        return map_values(
            t,
            samples=samples,
            photometric=photometric,
            slope=slope,
            intercept=intercept,
            window=window,
            bits_stored=bits_stored,
            channels=channels,
        )  # [H, W, C]

    p00, p01, p10, p11 = tap(y0, x0), tap(y0, x1), tap(y1, x0), tap(y1, x1)
    fx_ = fx[None, :, None]
    fy_ = fy[:, None, None]
    out = (1.0 - fy_) * ((1.0 - fx_) * p00 + fx_ * p01) + fy_ * ((1.0 - fx_) * p10 + fx_ * p11)
    mean_ = np.asarray(mean, dtype=np.float64).reshape(1, 1, -1)
    std_ = np.asarray(std, dtype=np.float64).reshape(1, 1, -1)
    if mean_.shape[-1] != channels or std_.shape[-1] != channels:
        raise ValueError("mean/std must have one value per channel")
    out = (out - mean_) / std_
    return np.ascontiguousarray(out.transpose(2, 0, 1)).astype(np.float32)


def preprocess_stack(frames, *, manifest_window=None, manifest_windows=None, height=64, width=64,
                     mean=(0.0,), std=(1.0,)):
    """Preprocess one 2.5D input: `frames` are the 2k+1 neighbouring frames in slice order, each a dict
    {"stored": [rows, cols] array, "photometric", "slope", "intercept", "file_windows"} (monochrome).

    The centre frame's window (manifest > its first valid file pair > its rescaled min/max) applies to
    every channel; channel c is frame c preprocessed alone with that window and mean[c], std[c].
    manifest_window / manifest_windows: as preprocess_frame, but at most one window (a stack has one).
    Returns (float32 array [2k+1, height, width], the centre's window choice as choose_window gives it).
    """
    n = len(frames)
    if n % 2 != 1:
        raise ValueError(f"a stack holds 2k+1 frames, got {n}")
    if len(mean) != n or len(std) != n:
        raise ValueError("mean/std must have one value per channel (frame)")
    for f in frames:
        if np.asarray(f["stored"]).ndim != 2 or f["photometric"] not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError("a colour frame cannot be stacked: a 2.5D model takes monochrome slices")
    if manifest_window is not None and manifest_windows:
        raise ValueError("manifest_window and manifest_windows are mutually exclusive")
    ws = list(manifest_windows or ()) or ([] if manifest_window is None else [manifest_window])
    if len(ws) > 1:
        raise ValueError("a stack is windowed with one window, not windows stacked as channels")
    centre = frames[n // 2]
    a = np.asarray(centre["stored"], dtype=np.float64)
    choice = choose_windows(a.min(), a.max(), centre["slope"], centre["intercept"], ws,
                            centre["file_windows"], 1)[0]
    window = (choice["center"], choice["width"])
    planes = [
        preprocess_frame(
            f["stored"],
            photometric=f["photometric"],
            slope=f["slope"],
            intercept=f["intercept"],
            manifest_window=window,
            channels=1,
            height=height,
            width=width,
            mean=(mean[c],),
            std=(std[c],),
        )[0]
        for c, f in enumerate(frames)
    ]
    return np.stack(planes).astype(np.float32), choice


# --------------------------------------------------------------------------- DICOM helpers


def _first(value):
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        value = list(value)[0]
    except TypeError:
        pass
    except IndexError:
        return None
    if value is None or value == "":
        return None
    return float(value)


def _ds_values(value):
    """Every value of a DS attribute as floats, in order (at most MAX_FILE_WINDOWS); a value that does
    not parse is NaN, so that its pair counts as invalid."""
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        items = value.split("\\") if value.strip() else []
    else:
        try:
            items = list(value)
        except TypeError:
            items = [value]
    out = []
    for v in items[:MAX_FILE_WINDOWS]:
        try:
            out.append(float(str(v).strip()))
        except ValueError:
            out.append(float("nan"))
    return out


def file_windows_from_dataset(ds):
    """All (center, width) pairs of WindowCenter/WindowWidth, in order, invalid ones included; a centre
    without a width (or the reverse) is a pair with NaN in the missing place."""
    centers = _ds_values(ds.get("WindowCenter", None))
    widths = _ds_values(ds.get("WindowWidth", None))
    n = max(len(centers), len(widths))
    nan = float("nan")
    return [(centers[i] if i < len(centers) else nan, widths[i] if i < len(widths) else nan) for i in range(n)]


def frame_params_from_dataset(ds):
    """Per-instance preprocessing parameters read from a pydicom Dataset."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if samples == 3:
        photometric = "RGB"  # pydicom 3 converts YBR_* to RGB in pixel_array by default
    slope = _first(ds.get("RescaleSlope", None))
    intercept = _first(ds.get("RescaleIntercept", None))
    windows = file_windows_from_dataset(ds)
    return {
        "samples": samples,
        "photometric": photometric,
        "slope": 1.0 if slope is None else slope,
        "intercept": 0.0 if intercept is None else intercept,
        "file_windows": windows,
        # The pair the rule applies when the manifest has no window (None: min/max), for callers that
        # hold a single window (models/lesion-demo/train.py).
        "file_window": next(((c, w) for c, w in windows if window_is_valid(c, w)), None),
        "bits_stored": int(ds.get("BitsStored", ds.get("BitsAllocated", 16))),
    }


def frames_from_dataset(ds):
    """List of frames ([rows, cols] or [rows, cols, 3] arrays) from ds.pixel_array."""
    arr = ds.pixel_array
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if nframes > 1 or arr.ndim == (4 if samples == 3 else 3):
        return [arr[i] for i in range(arr.shape[0])]
    return [arr]
