//! Custom resource types of API group `parley.dev`, version `v1alpha1`.
//!
//! Each field's doc comment becomes its description in the generated CRD; schema attributes carry
//! ranges, patterns and enums, and `x_kube(validation)` attributes carry CEL rules for constraints
//! that span fields or compare with the stored object. `crds/` is generated from these types by
//! `parley-operator crdgen` (see [`generate`]).

mod common;
mod domain;
mod front_end;
pub mod generate;
mod home_server;

pub use common::*;
pub use domain::*;
pub use front_end::*;
pub use home_server::*;

/// API group of Parley's resources.
pub const GROUP: &str = "parley.dev";
/// API version of Parley's resources.
pub const VERSION: &str = "v1alpha1";

#[cfg(test)]
mod tests;
