//! The read and admin sides of the service over gRPC: `radstream.v1.Studies` ([`watch`]) and
//! `radstream.v1.Models` ([`models`]). Services of their own, so a viewer's or an ML engineer's
//! credentials (a later issue) need not let them push, and pushers' need not let them swap models.

pub mod models;
pub mod watch;

pub use models::ModelsService;
pub use watch::StudiesService;
