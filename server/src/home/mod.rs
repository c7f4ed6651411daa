//! The Home Server role: registrar, digest authentication, instant message delivery, presence.
//! `core` is the protocol state machine (no IO, tested with simulated time in `tests`); the shared
//! IO layer (`crate::driver`) performs its actions; `driver` adds what only a Home Server does.

pub mod auth;
mod core;
pub mod driver;
mod expiring;
mod front_ends;
pub mod guard;
mod identity;
mod im;
pub mod moves;
mod notify_window;
mod offline;
pub mod presence;
mod register;
pub mod registrar;
mod request;
#[cfg(test)]
mod tests;

pub use self::core::{Core, CoreSettings};
pub use self::driver::{HomeServer, open};
