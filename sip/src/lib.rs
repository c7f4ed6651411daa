//! Parley's SIP protocol layer, with no sockets and no clock of its own: the message layer
//! (framing, normalising compact names, folding and LF line ends, URIs and name-addr headers,
//! response building), non-INVITE transactions as state machines that take
//! messages and the current time and say what to send, flows, and the routing helpers a proxy and
//! a registrar share (Via stamping, flow tokens, stateless branches). The server's tokio layer
//! performs what these decide.
//!
//! Everything is parsed here rather than by rsip 0.4.0 (the design's first choice): rsip has gaps
//! at the message level (stream framing, compact names, folded lines, LF-only line ends, extension
//! methods), cannot hold an IPv6 literal, and its URI tokenizer cost a tenth of a REGISTER's
//! instructions (see `uri`).

pub mod compact;
pub mod flow;
pub mod framing;
pub mod hashing;
pub mod hex;
pub mod message;
pub mod params;
pub mod response;
pub mod routing;
pub mod transaction;
pub mod uri;
pub mod via;

pub use message::{Message, ParseError, StartLine};
