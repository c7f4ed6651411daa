//! The Home Server role: registrar, digest authentication, instant message delivery.

pub mod auth;
mod core;
mod im;
pub mod presence;
mod register;
pub mod registrar;

pub use self::core::{Core, CoreHandler, CoreSettings};
