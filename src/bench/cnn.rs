//! The realistic model of `bench load --model realistic`: a 256×256 one-channel convolutional network of
//! about 2.4 million parameters (a strided 3×3 conv stem and blocks to 256 channels, three 3×3 convs at
//! 16×16, global average pool, dense → one sigmoid score), random but seeded weights, dynamic batch.
//!
//! Why it exists: the bundled model (64×64, a few thousand parameters) costs almost nothing per slice, so
//! with it a benchmark measures decode and transport only; a clinical CT classifier spends ~0.7 GMAC
//! per slice, and "end to end vs raw onnxruntime" only means something at that cost. Built here in
//! Rust (prost messages for the few ONNX protos needed; tags from onnx/onnx.proto3, as in
//! `model::onnx`) so the bench needs no Python to make it; the peer loads the same file in
//! onnxruntime-Python.

use std::path::{Path, PathBuf};

use prost::Message;

use super::{io_error, Result};

#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
    /// AttributeType: INT 2, INTS 7.
    #[prost(int32, tag = "20")]
    r#type: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    /// FLOAT = 1.
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

/// Input side in pixels.
pub const SIDE: i64 = 256;
/// Name and version of the model (`models list`, the findings' model ref).
pub const NAME: &str = "bench-cnn";
pub const VERSION: &str = "1.0.0";
/// The weights' seed: the same file on every machine.
const SEED: u64 = 20_240_614;
/// (out channels, stride) of each 3×3 conv + ReLU, from the 1-channel input.
const BLOCKS: [(i64, i64); 7] = [
    (32, 2),
    (64, 2),
    (128, 2),
    (256, 2),
    (256, 1),
    (256, 1),
    (256, 1),
];

/// SplitMix64: a seeded stream without a dependency.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32) / ((1u64 << 24) as f32)
    }

    /// Uniform in [-a, a].
    fn uniform(&mut self, a: f32) -> f32 {
        (self.next_f32() * 2.0 - 1.0) * a
    }
}

fn tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: 1,
        name: name.into(),
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: v.to_vec(),
        r#type: 7,
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    input: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: input.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: name.into(),
        op_type: op.into(),
        attribute: attrs,
    }
}

fn value_info(name: &str, dims: &[Dimension]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: 1,
                shape: Some(TensorShapeProto { dim: dims.to_vec() }),
            }),
        }),
    }
}

fn fixed(v: i64) -> Dimension {
    Dimension {
        dim_value: Some(v),
        dim_param: None,
    }
}

fn batch() -> Dimension {
    Dimension {
        dim_value: None,
        dim_param: Some("N".into()),
    }
}

/// The ONNX file's bytes and its parameter count.
pub fn onnx_bytes() -> (Vec<u8>, usize) {
    let mut rng = Rng(SEED);
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut params = 0;
    let mut prev = "image".to_string();
    let mut in_ch = 1i64;
    for (k, &(out_ch, stride)) in BLOCKS.iter().enumerate() {
        let fan_in = (in_ch * 9) as f32;
        // He-uniform keeps the activations' scale through the ReLUs.
        let bound = (6.0 / fan_in).sqrt();
        let w: Vec<f32> = (0..out_ch * in_ch * 9)
            .map(|_| rng.uniform(bound))
            .collect();
        let b: Vec<f32> = (0..out_ch).map(|_| rng.uniform(0.01)).collect();
        params += w.len() + b.len();
        let (wn, bn, conv, relu) = (
            format!("conv{k}.w"),
            format!("conv{k}.b"),
            format!("conv{k}"),
            format!("relu{k}"),
        );
        inits.push(tensor(&wn, &[out_ch, in_ch, 3, 3], &w));
        inits.push(tensor(&bn, &[out_ch], &b));
        nodes.push(node(
            "Conv",
            &conv,
            &[&prev, &wn, &bn],
            &conv,
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[stride, stride]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        ));
        nodes.push(node("Relu", &relu, &[&conv], &relu, vec![]));
        prev = relu;
        in_ch = out_ch;
    }
    nodes.push(node("GlobalAveragePool", "gap", &[&prev], "gap", vec![]));
    nodes.push(node(
        "Flatten",
        "flat",
        &["gap"],
        "flat",
        vec![AttributeProto {
            name: "axis".into(),
            i: 1,
            r#type: 2,
            ..Default::default()
        }],
    ));
    let bound = (3.0 / in_ch as f32).sqrt();
    let w: Vec<f32> = (0..in_ch).map(|_| rng.uniform(bound)).collect();
    params += w.len() + 1;
    inits.push(tensor("dense.w", &[in_ch, 1], &w));
    inits.push(tensor("dense.b", &[1], &[0.0]));
    nodes.push(node(
        "Gemm",
        "dense",
        &["flat", "dense.w", "dense.b"],
        "logit",
        vec![],
    ));
    nodes.push(node("Sigmoid", "sigmoid", &["logit"], "scores", vec![]));
    let model = ModelProto {
        ir_version: 8,
        producer_name: "radstream bench".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: NAME.into(),
            initializer: inits,
            input: vec![value_info(
                "image",
                &[batch(), fixed(1), fixed(SIDE), fixed(SIDE)],
            )],
            output: vec![value_info("scores", &[batch(), fixed(1)])],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
    };
    (model.encode_to_vec(), params)
}

/// The manifest: CT soft-tissue window 40/400, one `finding` label.
pub fn manifest(params: usize) -> String {
    format!(
        r#"[model]
name = "{NAME}"
version = "{VERSION}"
file = "model.onnx"
description = "radstream bench load: a {SIDE}x{SIDE} CNN of {params} random (seeded) parameters; its scores mean nothing"

[input]
name = "image"
channels = 1
height = {SIDE}
width = {SIDE}

[preprocess]
window = {{ center = 40.0, width = 400.0 }}
mean = [0.5]
std = [0.25]

[outputs]
scores = "scores"

[[labels]]
name = "finding"
threshold = 0.5
"#
    )
}

/// The model directory under `root` (`root/bench-cnn/1.0.0/`), written when missing.
pub fn ensure(root: &Path) -> Result<PathBuf> {
    let dir = root.join(NAME).join(VERSION);
    let onnx = dir.join("model.onnx");
    let toml = dir.join("model.toml");
    if onnx.is_file() && toml.is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let (bytes, params) = onnx_bytes();
    // Written under another name first: a run that stops half-way leaves no half model behind.
    let tmp = dir.join(".model.onnx.partial");
    std::fs::write(&tmp, bytes).map_err(io_error(&tmp))?;
    std::fs::write(&toml, manifest(params)).map_err(io_error(&toml))?;
    std::fs::rename(&tmp, &onnx).map_err(io_error(&onnx))?;
    Ok(dir)
}

/// Where the realistic model lives by default: the radstream cache (`bench-models/`).
pub fn default_root() -> PathBuf {
    crate::config::Config::cache_dir().join("bench-models")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_a_few_million_parameters_and_deterministic() {
        let (a, params) = onnx_bytes();
        let (b, _) = onnx_bytes();
        assert_eq!(a, b);
        assert!((2_000_000..5_000_000).contains(&params), "{params}");
        // weights dominate the file: 4 bytes each
        assert!(a.len() > params * 4 && a.len() < params * 4 + 100_000);
        let manifest =
            crate::model::Manifest::parse(&manifest(params), "bench-cnn").expect("manifest parses");
        assert_eq!(manifest.input.height, SIDE as u32);
    }

    /// What the service checks before serving a version (manifest, graph signature, a dry run of the
    /// largest batch) passes on the written directory.
    #[test]
    fn the_written_model_validates_as_the_service_loads_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = ensure(root.path()).expect("written");
        assert_eq!(dir, root.path().join("bench-cnn/1.0.0"));
        let library = crate::config::Config::default().ort_library_path();
        let env = crate::inference::runtime(&library).expect("onnxruntime (RADSTREAM_ORT_LIB)");
        let summary = crate::model::validate::validate_dir(env, &dir, 4)
            .unwrap_or_else(|e| panic!("invalid: {:?}", e.problems));
        assert!(summary.contains("bench-cnn"), "{summary}");
    }
}
