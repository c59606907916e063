//! Generated gRPC types for `radstream.v1` (see proto/radstream/v1/radstream.proto).

/// Messages and the `Analysis` service of the versioned public API.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("radstream.v1");
}

/// The compiled descriptor set, served through gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/radstream_descriptor.bin"));
