//! Generated gRPC types for `radstream.v1` (see proto/radstream/v1/radstream.proto).

/// Messages and the `Analysis` service of the versioned public API.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("radstream.v1");
    // The canonical proto3 JSON mapping (serde impls by pbjson-build, see build.rs).
    include!(concat!(env!("OUT_DIR"), "/radstream.v1.serde.rs"));
}

/// The compiled descriptor set, served through gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/radstream_descriptor.bin"));
