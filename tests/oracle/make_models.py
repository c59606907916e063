"""Small ONNX models and manifests for tests/model_manifest.rs, with onnxruntime-Python's scores.

usage: make_models.py OUT

Writes OUT/<case>/{model.toml, model.onnx[, weights.bin], input.bin, expected.json}
(context1: a 2.5D model, [input] context = 1, whose 3 channels are a slice and its neighbours):
  input.bin      the batch radstream's session receives: n slices, NCHW float32 little-endian
  expected.json  {"n": n, "scores": [[...] per slice]}: onnxruntime on that batch converted the way
                 the manifest says (NHWC transpose, float16, uint8 = round(clamp(x, 0, 255)), halves up), run in
                 the graph's own batch size (fixed batches: padded with zeros, padded rows dropped),
                 outputs cast to float32 and passed through the declared activation.
Cases prefixed `bad_` are models that must be refused; they have no expected.json.
"""

import json
import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

C, H, W = 3, 8, 8
OPSET = 17
IR = 8
rng = np.random.default_rng(20240612)


def save(model, path, external=None):
    onnx.checker.check_model(model)
    if external:
        # save_model moves the tensors out of the proto it is given: keep the caller's intact.
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external, size_threshold=0)
    else:
        onnx.save_model(model, path)


def make(nodes, inits, x_type, x_shape, y_name, y_type, y_shape):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", x_type, x_shape)],
        [helper.make_tensor_value_info(y_name, y_type, y_shape)],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR)


def dense_head(labels, bias, src="flat", out="y"):
    """Gemm from a flattened [N, C*H*W] float tensor to [N, labels]."""
    w = numpy_helper.from_array((rng.standard_normal((C * H * W, labels)) * 0.1).astype(np.float32), "w")
    b = numpy_helper.from_array(np.asarray(bias, np.float32), "b")
    return [helper.make_node("Gemm", [src, "w", "b"], [out])], [w, b]


def manifest(name, labels, extra_input="", extra_outputs="", scores="y", file="model.onnx"):
    lines = [
        "[model]", f'name = "{name}"', 'version = "1.0.0"', f'file = "{file}"',
        "[input]", 'name = "x"', f"channels = {C}", f"height = {H}", f"width = {W}", extra_input,
        "[preprocess]", "mean = [0.0, 0.0, 0.0]", "std = [1.0, 1.0, 1.0]",
        "[outputs]", f'scores = "{scores}"', extra_outputs,
    ]
    for l in labels:
        lines += ["[[labels]]", f'name = "{l}"', "threshold = 0.3"]
    return "\n".join(lines) + "\n"


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def reference(path, batch_nchw, layout="NCHW", dtype="float32", fixed=None, kind="probabilities"):
    x = batch_nchw
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    x = np.ascontiguousarray(x)
    if dtype == "float16":
        x = x.astype(np.float16)
    elif dtype == "uint8":
        # round(clamp(x, 0, 255)) with halves away from zero (Rust's f32::round; numpy's rounds to even).
        x = np.floor(np.clip(x.astype(np.float64), 0, 255) + 0.5).astype(np.uint8)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    n = x.shape[0]
    outs = []
    step = fixed or n
    for s in range(0, n, step):
        part = x[s:s + step]
        rows = part.shape[0]
        if fixed and rows < fixed:
            part = np.concatenate([part, np.zeros((fixed - rows,) + part.shape[1:], part.dtype)])
        outs.append(sess.run(None, {"x": part})[0][:rows].astype(np.float32))
    y = np.concatenate(outs)
    if kind == "sigmoid":
        y = sigmoid(y)
    elif kind == "softmax":
        y = softmax(y)
    return y


def write_case(out, case, model, toml, n, scale=1.0, offset=0.0, external=None, **ref):
    d = os.path.join(out, case)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    save(model, path, external)
    with open(os.path.join(d, "model.toml"), "w") as f:
        f.write(toml)
    batch = (rng.standard_normal((n, C, H, W)) * scale + offset).astype(np.float32)
    if ref.get("dtype") == "uint8":
        batch[0, 0, 0, :] = np.arange(W) + 0.5  # exact halves: the rounding rule matters
    batch.astype("<f4").tofile(os.path.join(d, "input.bin"))
    if not case.startswith("bad_"):
        y = reference(path, batch, **ref)
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump({"n": n, "scores": y.tolist()}, f)
    return d


def main(out):
    os.makedirs(out, exist_ok=True)
    F = TensorProto.FLOAT
    # NHWC classifier: transpose -> conv -> relu -> global pool -> dense -> 4 logits (softmax).
    conv_w = numpy_helper.from_array((rng.standard_normal((4, C, 3, 3)) * 0.3).astype(np.float32), "cw")
    conv_b = numpy_helper.from_array(np.zeros(4, np.float32), "cb")
    fc_w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "fw")
    fc_b = numpy_helper.from_array(np.asarray([0.5, -0.5, 0.2, 0.0], np.float32), "fb")
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["xt", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"]),
    ]
    classes = ["normal", "bleed", "tumour", "stroke"]
    nhwc = make(nodes, [conv_w, conv_b, fc_w, fc_b], F, ["N", H, W, C], "logits", F, ["N", 4])
    write_case(out, "nhwc_softmax", nhwc,
               manifest("nhwc-softmax", classes, 'layout = "NHWC"', 'kind = "softmax"', "logits"),
               5, layout="NHWC", kind="softmax")
    write_case(out, "bad_layout", nhwc, manifest("bad-layout", classes, "", 'kind = "softmax"', "logits"), 1)

    flat = helper.make_node("Flatten", ["x"], ["flat"])
    # Logits with a bias far from 0..1: kind = "sigmoid" fits, kind = "probabilities" must be refused.
    head, inits = dense_head(2, [2.0, -3.0])
    logits = make([flat] + head, inits, F, ["N", C, H, W], "y", F, ["N", 2])
    write_case(out, "sigmoid", logits, manifest("sigmoid", ["a", "b"], "", 'kind = "sigmoid"'), 5,
               kind="sigmoid")
    write_case(out, "bad_logits", logits, manifest("bad-logits", ["a", "b"]), 1)

    # Fixed batches: probabilities from the graph.
    for b in (1, 4):
        head, inits = dense_head(2, [0.1, -0.1], out="z")
        m = make([flat] + head + [helper.make_node("Sigmoid", ["z"], ["y"])], inits,
                 F, [b, C, H, W], "y", F, [b, 2])
        write_case(out, f"fixed{b}", m, manifest(f"fixed{b}", ["a", "b"], f"batch = {b}"),
                   5 if b == 1 else 3, fixed=b)
        if b == 1:
            write_case(out, "bad_batch", m, manifest("bad-batch", ["a", "b"]), 1)

    # float16 in and out (computed in float32 inside).
    head, inits = dense_head(2, [0.3, -0.2], src="flat32", out="z")
    m = make([helper.make_node("Cast", ["x"], ["x32"], to=F),
              helper.make_node("Flatten", ["x32"], ["flat32"])] + head +
             [helper.make_node("Sigmoid", ["z"], ["s"]),
              helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT16)],
             inits, TensorProto.FLOAT16, ["N", C, H, W], "y", TensorProto.FLOAT16, ["N", 2])
    write_case(out, "f16", m, manifest("f16", ["a", "b"], 'dtype = "float16"', 'dtype = "float16"'), 5,
               dtype="float16")
    write_case(out, "bad_dtype", m, manifest("bad-dtype", ["a", "b"], "", 'dtype = "float16"'), 1)

    # uint8 input: values around 0..255 so the rounding and the clamp both matter.
    head, inits = dense_head(2, [0.0, 0.0], src="flat32", out="z")
    inits[0] = numpy_helper.from_array((numpy_helper.to_array(inits[0]) / 255.0).astype(np.float32), "w")
    m = make([helper.make_node("Cast", ["x"], ["x32"], to=F),
              helper.make_node("Flatten", ["x32"], ["flat32"])] + head +
             [helper.make_node("Sigmoid", ["z"], ["y"])],
             inits, TensorProto.UINT8, ["N", C, H, W], "y", F, ["N", 2])
    write_case(out, "uint8", m, manifest("uint8", ["a", "b"], 'dtype = "uint8"'), 5, scale=90.0,
               offset=128.0, dtype="uint8")

    # External data inside the directory (fits), and one pointing outside it (refused).
    head, inits = dense_head(2, [0.1, 0.2], out="z")
    m = make([flat] + head + [helper.make_node("Sigmoid", ["z"], ["y"])], inits,
             F, ["N", C, H, W], "y", F, ["N", 2])
    write_case(out, "external", m, manifest("external", ["a", "b"]), 5, external="weights.bin")
    d = write_case(out, "bad_external", m, manifest("bad-external", ["a", "b"]), 1,
                   external="weights.bin")
    shutil.move(os.path.join(d, "weights.bin"), os.path.join(out, "outside.bin"))
    g = onnx.load(os.path.join(d, "model.onnx"), load_external_data=False)
    for t in g.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.bin"
    onnx.save_model(g, os.path.join(d, "model.onnx"))

    # 2.5D: context = 1, the 3 channels are a slice and its two neighbours in slice order. A dense head
    # over all channels, so swapping neighbours changes the scores.
    head, inits = dense_head(2, [0.2, -0.4], out="z")
    m = make([flat] + head + [helper.make_node("Sigmoid", ["z"], ["y"])], inits,
             F, ["N", C, H, W], "y", F, ["N", 2])
    write_case(out, "context1", m, manifest("context1", ["a", "b"], "context = 1"), 5)

    # A manifest whose file leaves the directory.
    d = os.path.join(out, "bad_file")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.toml"), "w") as f:
        f.write(manifest("bad-file", ["a", "b"], file="../sigmoid/model.onnx"))


if __name__ == "__main__":
    main(sys.argv[1])
