//! The SIP message layer: framing, normalising (compact names, folding, LF line ends), typed views
//! over rsip for URIs and name-addr headers, and response building.
//!
//! rsip 0.4.0 parses URIs and typed headers well but has gaps at the message level (stream framing,
//! compact names, folded lines, LF-only line ends, extension methods, IPv6 literals). This layer
//! splits messages itself and hands rsip only what it handles correctly.

pub mod compact;
pub mod framing;
pub mod message;
pub mod params;
pub mod response;
pub mod routing;
pub mod uri;
pub mod via;

pub use message::{Message, ParseError, StartLine};
