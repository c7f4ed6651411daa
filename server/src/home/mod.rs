//! The Home Server role: registrar, digest authentication, instant message delivery.

pub mod auth;
mod core;
pub mod guard;
mod im;
pub mod presence;
mod register;
pub mod registrar;

pub use self::core::{Core, CoreHandler, CoreSettings};
