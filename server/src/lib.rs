//! Parley's SIP server: the Home Server and Front-End roles as state machines without IO
//! (`service`, `home`, `frontend`), the one tokio layer that runs them (`driver`, `transport`,
//! `serve`), the directory, the durable store, directory preparation and administration. The
//! `parley-server` binary is its command line; the fuzz targets (`fuzz/`) and tests use it too.

pub mod admin;
pub mod directory;
pub mod domains;
pub mod driver;
pub mod frontend;
pub mod fuzzing;
pub mod home;
pub mod ops;
pub mod prep;
pub mod probe;
pub mod serve;
pub mod service;
pub mod store;
pub mod transport;
pub mod web;

pub use parley_config as config;
pub use parley_sip as sip;
pub use parley_sip::transaction;
