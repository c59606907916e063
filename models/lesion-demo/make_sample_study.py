#!/usr/bin/env python3
"""Build models/lesion-demo/sample-study/slice-01.dcm .. slice-12.dcm (deterministic).

A 12-slice demo CT series derived from ONE real CT slice of the pydicom-data package
(bad_sequence.dcm, 512x512, 0.287 mm pixels, window 40/350; this image is in the model's
HELD-OUT set, i.e. never seen in training).  Each slice gets a small deterministic shift and
fresh noise so the slices differ.  A synthetic hyperdense sphere (radius 12 mm, +150 HU, soft
edge) centred between slices 6 and 7 (5 mm slice spacing) is present on slices 5..8 only.

Nothing identifying is copied from the source: a new dataset is written with only image-
geometry / pixel-module attributes, fresh deterministic UIDs, PatientName "DEMO^SAMPLE",
PatientID "RADSTREAM-DEMO".  Explicit VR Little Endian with proper file meta.

Then the slices are scored with the trained model (onnxruntime + tests/oracle/spec.py, the
manifest's preprocessing) and the scores printed.

Run (oracle venv: pydicom, numpy, onnxruntime):
    /root/.cache/radstream/venv/bin/python models/lesion-demo/make_sample_study.py
"""

from __future__ import annotations

import os
import sys
import tomllib
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "oracle"))
import spec  # noqa: E402

OUT = os.path.join(HERE, "sample-study")
N_SLICES = 12
THICKNESS = 5.0  # mm, also the slice spacing
LESION_SLICES = (5, 6, 7, 8)  # 1-based InstanceNumbers where the sphere is visible
SPHERE_R_MM = 12.0
SPHERE_Z_MM = 5.5 * THICKNESS  # between slice 6 (z = 25) and slice 7 (z = 30)
SPHERE_ROW, SPHERE_COL = 100.0, 84.0  # centre in source pixel coordinates (soft tissue)
LESION_HU = 150.0
NOISE_HU = 10.0
SEED = 12345
ENTROPY = "radstream lesion-demo sample study v1"


def source_path():
    import data_store  # pydicom-data

    return os.path.join(os.path.dirname(data_store.__file__), "data", "bad_sequence.dcm")


def shifted(a, dy, dx, fill):
    out = np.full_like(a, fill)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def build():
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = pydicom.dcmread(source_path())
        stored = src.pixel_array.astype(np.float64)
    slope = float(src.get("RescaleSlope", 1) or 1)
    intercept = float(src.get("RescaleIntercept", 0) or 0)
    hu = stored * slope + intercept
    rows, cols = hu.shape
    ps = [float(x) for x in src.PixelSpacing]  # [row spacing, column spacing] in mm
    bits_stored = int(src.BitsStored)
    wc = list(src.WindowCenter) if src.get("WindowCenter") is not None else None
    ww = list(src.WindowWidth) if src.get("WindowWidth") is not None else None
    if wc is not None and not isinstance(wc, list):
        wc, ww = [wc], [ww]

    study_uid = generate_uid(entropy_srcs=[ENTROPY, "study"])
    series_uid = generate_uid(entropy_srcs=[ENTROPY, "series"])
    frame_uid = generate_uid(entropy_srcs=[ENTROPY, "frame-of-reference"])
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    info = []
    for k in range(1, N_SLICES + 1):
        z = (k - 1) * THICKNESS
        dy, dx = int(rng.integers(-4, 5)), int(rng.integers(-4, 5))
        img = shifted(hu, dy, dx, float(hu.min()))
        img = img + rng.normal(0.0, NOISE_HU, img.shape)
        dz = z - SPHERE_Z_MM
        r_mm = np.sqrt(max(0.0, SPHERE_R_MM ** 2 - dz ** 2))
        if r_mm > 0:
            # sphere section: soft-edged disc (1 mm smoothstep edge), follows the slice shift
            d = np.sqrt(((yy - (SPHERE_ROW + dy)) * ps[0]) ** 2 + ((xx - (SPHERE_COL + dx)) * ps[1]) ** 2)
            t = np.clip((d - (r_mm - 0.5)) / 1.0, 0.0, 1.0)
            img = img + LESION_HU * (1.0 - t * t * (3.0 - 2.0 * t))
        info.append((k, z, r_mm, dy, dx))
        st = np.clip(np.rint((img - intercept) / slope), 0, 2 ** bits_stored - 1).astype(np.uint16)

        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid(entropy_srcs=[ENTROPY, "instance", str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = "20000101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "radstream demo (synthetic)"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "radstream demo study (synthetic lesion, NOT clinical)"
        ds.SeriesDescription = "axial 5mm, synthetic sphere on slices 5-8"
        ds.PatientName = "DEMO^SAMPLE"
        ds.PatientID = "RADSTREAM-DEMO"
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "synthetic derivative; only pixel data and geometry kept"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SliceThickness = THICKNESS
        ds.SpacingBetweenSlices = THICKNESS
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k
        ds.ImagePositionPatient = [-0.5 * cols * ps[1], -0.5 * rows * ps[0], z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = z
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = ps
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        if wc is not None:
            ds.WindowCenter = wc
            ds.WindowWidth = ww
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = "HU"
        ds.BurnedInAnnotation = "NO"
        ds.PixelData = st.tobytes()
        ds.save_as(os.path.join(OUT, f"slice-{k:02d}.dcm"), enforce_file_format=True)
    return info


def score():
    import onnxruntime as ort
    import pydicom

    with open(os.path.join(HERE, "model.toml"), "rb") as f:
        man = tomllib.load(f)
    pre = man.get("preprocess", {})
    win = pre.get("window")
    inp = man["input"]
    X, names = [], []
    for k in range(1, N_SLICES + 1):
        p = os.path.join(OUT, f"slice-{k:02d}.dcm")
        ds = pydicom.dcmread(p)
        prm = spec.frame_params_from_dataset(ds)
        for fr in spec.frames_from_dataset(ds):
            X.append(spec.preprocess_frame(
                fr, photometric=prm["photometric"], slope=prm["slope"], intercept=prm["intercept"],
                file_window=prm["file_window"], bits_stored=prm["bits_stored"],
                manifest_window=None if win is None else (win["center"], win["width"]),
                channels=inp["channels"], height=inp["height"], width=inp["width"],
                mean=pre["mean"], std=pre["std"]))
            names.append(k)
    sess = ort.InferenceSession(os.path.join(HERE, man["model"]["file"]), providers=["CPUExecutionProvider"])
    scores, heat = sess.run([man["outputs"]["scores"], man["outputs"]["map"]], {inp["name"]: np.stack(X)})
    thr = man["labels"][0]["threshold"]
    return [(k, float(scores[i, 0]), np.unravel_index(int(np.argmax(heat[i, 0])), heat.shape[2:]), thr)
            for i, k in enumerate(names)]


def main():
    info = build()
    print(f"wrote {N_SLICES} slices to {os.path.relpath(OUT, REPO)}")
    res = score()
    print("slice  z_mm  lesion_r_mm  shift(dy,dx)  score   peak(row,col)/16  positive")
    for (k, z, r, dy, dx), (_, s, pk, thr) in zip(info, res):
        print(f"{k:5d} {z:5.1f} {r:12.1f}  ({dy:+d},{dx:+d})  {s:7.4f}  ({int(pk[0])},{int(pk[1])})  {s >= thr}")
    les = [s for (k, s, _, _) in res if k in LESION_SLICES]
    oth = [s for (k, s, _, _) in res if k not in LESION_SLICES]
    print(f"min score on lesion slices {min(les):.4f}, max score on other slices {max(oth):.4f}")


if __name__ == "__main__":
    main()
