//! Where instances enter the service. Today: the gRPC `Analyze` stream ([`grpc`]). A DICOM C-STORE
//! receiver will sit beside it and feed the same decode → score → study path.

pub mod grpc;

pub use grpc::AnalysisService;
