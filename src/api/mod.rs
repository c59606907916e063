//! The read side of the service over gRPC: `radstream.v1.Studies` ([`watch`]). A service of its own, so a
//! viewer's credentials (a later issue) need not let it push.

pub mod watch;

pub use watch::StudiesService;
