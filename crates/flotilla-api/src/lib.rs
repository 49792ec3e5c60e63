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

/// Armada's API (package `api`, and the Kubernetes pod-spec messages it carries), written
/// for Flotilla from Armada's wire facts: served by `flotilla-server`'s `armada` module.
pub mod armada {
    pub mod api {
        tonic::include_proto!("api");
    }
    /// Nested as the packages are, so the generated paths between them resolve.
    pub mod k8s {
        pub mod io {
            pub mod api {
                pub mod core {
                    pub mod v1 {
                        tonic::include_proto!("k8s.io.api.core.v1");
                    }
                }
            }
            pub mod apimachinery {
                pub mod pkg {
                    pub mod api {
                        pub mod resource {
                            tonic::include_proto!("k8s.io.apimachinery.pkg.api.resource");
                        }
                    }
                }
            }
        }
    }
}

/// KEDA's external scaler protocol (package `externalscaler`).
pub mod externalscaler {
    tonic::include_proto!("externalscaler");
}

/// Every file of the API above, encoded: what gRPC server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flotilla_descriptor.bin"));

pub mod auth;
mod convert;
pub mod dial;
pub mod tls;

pub use convert::{
    affinity_to_proto, class_limit_from_proto, class_limit_to_proto, node_from_report, node_to_report, template_from_proto,
    template_to_proto,
};
