//! Where instances enter the service. Today: the gRPC `Analyze` stream ([`grpc`]). A DICOM C-STORE
//! receiver will sit beside it as another thin transport: both hand bytes to the [`intake`], which
//! reads the header, tells the study registry, decodes and scores, and both hear back through the
//! results hub.

pub mod budget;
pub mod grpc;
pub mod intake;
pub mod probe;
mod session;
mod stacks;

pub use grpc::AnalysisService;
pub use intake::Intake;

#[cfg(test)]
mod tests {
    use prost::{
        bytes::{Bytes, BytesMut},
        Message,
    };

    use crate::proto::v1 as pb;

    /// The instance's bytes are a view of the buffer the request was received into, not a copy
    /// (build.rs generates `Instance.dicom` as `Bytes`): tonic hands prost its receive `BytesMut`, and
    /// the message then costs its size once. With a `Vec<u8>` field the bytes were copied out and the
    /// receive buffer kept its capacity as well.
    #[test]
    fn an_instance_s_bytes_are_a_view_of_the_receive_buffer() {
        let sent = pb::AnalyzeRequest {
            kind: Some(pb::analyze_request::Kind::Instance(pb::Instance {
                dicom: Bytes::from(vec![7u8; 512 * 1024]),
                client_ref: "0".into(),
            })),
        };
        let mut received = BytesMut::new();
        sent.encode(&mut received).expect("encode");
        let buffer = received.as_ptr() as usize..received.as_ptr() as usize + received.len();
        let decoded = pb::AnalyzeRequest::decode(received).expect("decode");
        let Some(pb::analyze_request::Kind::Instance(instance)) = decoded.kind else {
            panic!("an instance");
        };
        assert_eq!(instance.dicom.len(), 512 * 1024);
        assert!(instance.dicom.iter().all(|&b| b == 7));
        let start = instance.dicom.as_ptr() as usize;
        assert!(
            buffer.contains(&start) && buffer.contains(&(start + instance.dicom.len() - 1)),
            "the instance's bytes were copied out of the receive buffer"
        );
    }
}
