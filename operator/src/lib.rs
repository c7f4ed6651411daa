//! Parley's Kubernetes operator: CRD types, sizing tiers, pure builders, controllers and the
//! process runtime (leader election, health, metrics). `main.rs` is a thin CLI over this library
//! so the controller tests can run the same code against an API server double.

pub mod build;
pub mod controllers;
pub mod crd;
pub mod runtime;
pub mod tiers;

#[cfg(test)]
mod chart_check;
