//! What the service must know about an ONNX file before ONNX Runtime sees it: the external-data files
//! its tensors name. ORT would open any `location` it is given — `../../etc/…`, an absolute path, a
//! symlink out of the model directory — so every location is read here first from the protobuf and
//! checked to resolve inside the model directory; the files are then read by the service and handed
//! to ORT in memory (it never opens a path itself), and hashed into the model's identity with the graph.
//!
//! Only the fields on the way to a tensor's `external_data` are declared (prost skips the rest
//! unread, weights included): initializers, sparse initializers, and tensors and subgraphs inside node
//! attributes (Constant nodes, If/Loop/Scan bodies), in the main graph and in model-local functions.
//! Tags are those of onnx/onnx.proto3.

use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "25")]
    functions: Vec<FunctionProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FunctionProto {
    #[prost(message, repeated, tag = "7")]
    node: Vec<NodeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "15")]
    sparse_initializer: Vec<SparseTensorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NodeProto {
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AttributeProto {
    #[prost(message, optional, tag = "5")]
    t: Option<TensorProto>,
    #[prost(message, optional, boxed, tag = "6")]
    g: Option<Box<GraphProto>>,
    #[prost(message, repeated, tag = "10")]
    tensors: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    graphs: Vec<GraphProto>,
    #[prost(message, optional, tag = "22")]
    sparse_tensor: Option<SparseTensorProto>,
    #[prost(message, repeated, tag = "23")]
    sparse_tensors: Vec<SparseTensorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SparseTensorProto {
    #[prost(message, optional, tag = "1")]
    values: Option<TensorProto>,
    #[prost(message, optional, tag = "2")]
    indices: Option<TensorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(string, tag = "8")]
    name: String,
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<StringStringEntryProto>,
    /// 0 DEFAULT, 1 EXTERNAL.
    #[prost(int32, tag = "14")]
    data_location: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExternalDataError {
    #[error("the model file is not a valid ONNX protobuf: {0}")]
    Decode(String),
    #[error(
        "tensor {tensor:?} is stored externally but names no `location`; re-export the model with its \
         external data saved beside it (onnx.save_model(..., save_as_external_data=True))"
    )]
    NoLocation { tensor: String },
    #[error(
        "tensor {tensor:?} has its data in external file {location:?}, which {problem}; keep external \
         data files inside the model directory and name them relative to it"
    )]
    Outside {
        tensor: String,
        location: String,
        problem: String,
    },
    #[error(
        "tensor {tensor:?} has its data in external file {location:?}, but this model has no directory \
         to read it from (only a model loaded from a directory may use external data)"
    )]
    NoDirectory { tensor: String, location: String },
    #[error("cannot read external data file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One external-data reference: the tensor and the `location` exactly as the graph spells it (ORT
/// matches in-memory files by that string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    pub tensor: String,
    pub location: String,
}

/// Every external-data reference in `onnx`, in graph order (a location may repeat: tensors share files).
pub fn external_refs(onnx: &[u8]) -> Result<Vec<ExternalRef>, ExternalDataError> {
    let model = <ModelProto as prost::Message>::decode(onnx)
        .map_err(|e| ExternalDataError::Decode(e.to_string()))?;
    let mut out = Vec::new();
    if let Some(g) = &model.graph {
        graph_refs(g, &mut out)?;
    }
    for f in &model.functions {
        nodes_refs(&f.node, &mut out)?;
    }
    Ok(out)
}

fn graph_refs(g: &GraphProto, out: &mut Vec<ExternalRef>) -> Result<(), ExternalDataError> {
    for t in &g.initializer {
        tensor_ref(t, out)?;
    }
    for s in &g.sparse_initializer {
        sparse_refs(s, out)?;
    }
    nodes_refs(&g.node, out)
}

fn nodes_refs(nodes: &[NodeProto], out: &mut Vec<ExternalRef>) -> Result<(), ExternalDataError> {
    for a in nodes.iter().flat_map(|n| &n.attribute) {
        for t in a.t.iter().chain(&a.tensors) {
            tensor_ref(t, out)?;
        }
        for s in a.sparse_tensor.iter().chain(&a.sparse_tensors) {
            sparse_refs(s, out)?;
        }
        for g in a.g.iter().map(|g| &**g).chain(&a.graphs) {
            graph_refs(g, out)?;
        }
    }
    Ok(())
}

fn sparse_refs(s: &SparseTensorProto, out: &mut Vec<ExternalRef>) -> Result<(), ExternalDataError> {
    for t in s.values.iter().chain(&s.indices) {
        tensor_ref(t, out)?;
    }
    Ok(())
}

fn tensor_ref(t: &TensorProto, out: &mut Vec<ExternalRef>) -> Result<(), ExternalDataError> {
    let location = t
        .external_data
        .iter()
        .find(|e| e.key == "location")
        .map(|e| e.value.clone());
    match location {
        Some(location) => out.push(ExternalRef {
            tensor: t.name.clone(),
            location,
        }),
        None if t.data_location == 1 => {
            return Err(ExternalDataError::NoLocation {
                tensor: t.name.clone(),
            })
        }
        None => {}
    }
    Ok(())
}

/// Resolves `file` (as named in a manifest or a graph) inside `dir`: lexically (no `..`, not absolute)
/// and then for real (symlinks followed, the target must lie under the directory's real path and be a
/// regular file). Returns the real path; nothing is read.
pub fn resolve_inside(dir: &Path, file: &str) -> Result<PathBuf, String> {
    super::manifest::check_relative_file(file)?;
    let root = dir.canonicalize().map_err(|e| {
        format!(
            "cannot be resolved: the model directory {}: {e}",
            dir.display()
        )
    })?;
    let real = root
        .join(file)
        .canonicalize()
        .map_err(|e| format!("cannot be resolved in {}: {e}", root.display()))?;
    if !real.starts_with(&root) {
        return Err(format!(
            "resolves to {} outside the model directory {} (a symlink)",
            real.display(),
            root.display()
        ));
    }
    if !real.is_file() {
        return Err(format!(
            "resolves to {}, not a regular file",
            real.display()
        ));
    }
    Ok(real)
}

/// The external-data files of `onnx`, each checked with [`resolve_inside`] and read, keyed by the
/// location string the graph uses; sorted by location, each once. `dir` is `None` for a model with no
/// directory (the embedded one), which may not reference external data.
pub fn load_external(
    onnx: &[u8],
    dir: Option<&Path>,
) -> Result<Vec<(String, Vec<u8>)>, ExternalDataError> {
    let refs = external_refs(onnx)?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for r in refs {
        if files.iter().any(|(l, _)| *l == r.location) {
            continue;
        }
        let Some(dir) = dir else {
            return Err(ExternalDataError::NoDirectory {
                tensor: r.tensor,
                location: r.location,
            });
        };
        let path =
            resolve_inside(dir, &r.location).map_err(|problem| ExternalDataError::Outside {
                tensor: r.tensor.clone(),
                location: r.location.clone(),
                problem,
            })?;
        let bytes =
            std::fs::read(&path).map_err(|source| ExternalDataError::Io { path, source })?;
        files.push((r.location, bytes));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn external(name: &str, location: &str) -> TensorProto {
        TensorProto {
            name: name.into(),
            external_data: vec![
                StringStringEntryProto {
                    key: "location".into(),
                    value: location.into(),
                },
                StringStringEntryProto {
                    key: "offset".into(),
                    value: "0".into(),
                },
            ],
            data_location: 1,
        }
    }

    fn model(initializer: Vec<TensorProto>, nested: Vec<TensorProto>) -> Vec<u8> {
        let body = GraphProto {
            initializer: nested,
            ..Default::default()
        };
        ModelProto {
            graph: Some(GraphProto {
                initializer,
                node: vec![NodeProto {
                    attribute: vec![AttributeProto {
                        g: Some(Box::new(body)),
                        ..Default::default()
                    }],
                }],
                ..Default::default()
            }),
            functions: vec![],
        }
        .encode_to_vec()
    }

    #[test]
    fn finds_locations_in_initializers_and_subgraphs() {
        let bytes = model(
            vec![
                external("w", "weights.bin"),
                TensorProto {
                    name: "inline".into(),
                    ..Default::default()
                },
            ],
            vec![external("loop_w", "sub/loop.bin")],
        );
        let refs = external_refs(&bytes).expect("decodes");
        let locations: Vec<&str> = refs.iter().map(|r| r.location.as_str()).collect();
        assert_eq!(locations, ["weights.bin", "sub/loop.bin"]);
        assert!(external_refs(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn refuses_locations_outside_the_directory_naming_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model_dir = dir.path().join("m");
        std::fs::create_dir(&model_dir).expect("mkdir");
        std::fs::write(dir.path().join("outside.bin"), b"secret").expect("write");
        std::fs::write(model_dir.join("w.bin"), b"1234").expect("write");
        std::os::unix::fs::symlink(dir.path().join("outside.bin"), model_dir.join("link.bin"))
            .expect("symlink");

        let ok = load_external(
            &model(vec![external("w", "w.bin")], vec![]),
            Some(&model_dir),
        )
        .expect("inside");
        assert_eq!(ok, vec![("w.bin".to_string(), b"1234".to_vec())]);

        for (location, words) in [
            ("../outside.bin", "`..`"),
            ("/etc/passwd", "absolute"),
            ("link.bin", "symlink"),
            ("missing.bin", "cannot be resolved"),
        ] {
            let err = load_external(
                &model(vec![external("w", location)], vec![]),
                Some(&model_dir),
            )
            .expect_err(location)
            .to_string();
            assert!(
                err.contains(&format!("{location:?}"))
                    && err.contains(words)
                    && err.contains("\"w\""),
                "{location}: {err}"
            );
            assert!(!err.contains("secret"), "{err}");
        }
        let err = load_external(&model(vec![external("w", "w.bin")], vec![]), None)
            .expect_err("no directory")
            .to_string();
        assert!(err.contains("no directory"), "{err}");
        let no_location = TensorProto {
            name: "w".into(),
            data_location: 1,
            ..Default::default()
        };
        let err = load_external(&model(vec![no_location], vec![]), Some(&model_dir))
            .expect_err("no location")
            .to_string();
        assert!(err.contains("names no `location`"), "{err}");
    }
}
