//! Flotilla's gRPC API: the code generated from `proto/flotilla/v1` (and the internal
//! Raft transport in `proto/flotilla/raft/v1`), plus conversions to and from
//! `flotilla-model` types.
//!
//! This crate is for the wire contract only. It is not for behaviour: servers live in
//! `flotilla-server`, the executor client in `flotilla-executor`, the CLI in `flotilla`.
//!
//! ```
//! use flotilla_api::v1::ResourceAmounts;
//! let r = flotilla_model::Resources::new(500, 2 << 30, 1);
//! let wire: ResourceAmounts = (&r).into();
//! assert_eq!(flotilla_model::Resources::from(&wire), r);
//! ```

#![allow(clippy::large_enum_variant, clippy::derive_partial_eq_without_eq)]

pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}

pub mod raft {
    tonic::include_proto!("flotilla.raft.v1");
}

pub mod auth;
mod convert;
pub mod dial;
pub mod tls;

pub use convert::{node_from_report, node_to_report, template_from_proto, template_to_proto};
