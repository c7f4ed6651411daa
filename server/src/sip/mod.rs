//! The SIP message layer: framing, normalising, response building.

pub mod compact;
