//! Studies as the service owns them: [`registry`] holds every study's state (fed by every ingest path,
//! completed by end markers, closed streams or stability timers, evicted after retention) and
//! [`series`] puts a series' slices in position order and groups adjacent positive slices.

pub mod context;
pub mod registry;
pub mod series;

pub use registry::{
    Admission, Arrival, InstanceKey, Pin, PinSource, Registry, RegistryConfig, SliceFailure,
    StudyRules,
};

/// Where a slice sits: the identifiers every finding is tied to.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceId {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub frame: u32,
    pub instance_number: Option<i32>,
    pub slice_position_mm: Option<f64>,
    pub modality: String,
}
