//! `radstream bench`: measurements of the running service over its real interfaces, reported as
//! distributions (never a single timing). Today: how long a critical finding takes to reach a viewer
//! ([`alerts`]).

pub mod alerts;
