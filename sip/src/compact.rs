//! Compact header names (RFC 3261 section 7.3.3 and later RFCs) and their long forms.

use std::borrow::Cow;

/// Returns the long form of a compact header name, or the name unchanged.
pub fn expand(name: &str) -> &str {
    if name.len() != 1 {
        return name;
    }
    match name.as_bytes()[0].to_ascii_lowercase() {
        b'v' => "Via",
        b'f' => "From",
        b't' => "To",
        b'i' => "Call-ID",
        b'm' => "Contact",
        b'l' => "Content-Length",
        b'c' => "Content-Type",
        b'k' => "Supported",
        b'e' => "Content-Encoding",
        b'o' => "Event",
        b'u' => "Allow-Events",
        b's' => "Subject",
        b'r' => "Refer-To",
        _ => name,
    }
}

/// The header names Parley reads or writes, spelled as RFC 3261 and its extensions spell them.
const KNOWN: &[&str] = &[
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Max-Forwards",
    "Content-Length",
    "Content-Type",
    "Expires",
    "Min-Expires",
    "Authorization",
    "Proxy-Authorization",
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "Authentication-Info",
    "User-Agent",
    "Server",
    "Allow",
    "Allow-Events",
    "Supported",
    "Require",
    "Unsupported",
    "Accept",
    "Event",
    "Subscription-State",
    "Route",
    "Record-Route",
    "Path",
    "SIP-ETag",
    "SIP-If-Match",
    "Retry-After",
    "Date",
    "Subject",
    "Content-Encoding",
    "Refer-To",
    "Timestamp",
];

/// A parsed header name to keep: its long form, as a static string when it is one of the names
/// above byte for byte (no allocation for the usual headers of every message; any other spelling
/// is kept as it came, so a forwarded message keeps its names).
pub fn name(name: &str) -> Cow<'static, str> {
    let long = expand(name);
    match KNOWN.iter().find(|known| **known == long) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(long.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::{Cow, expand, name};

    #[test]
    fn known_names_are_static_and_others_kept_as_written() {
        assert!(matches!(name("Via"), Cow::Borrowed("Via")));
        assert!(matches!(name("i"), Cow::Borrowed("Call-ID")));
        assert!(matches!(name("CSeq"), Cow::Borrowed("CSeq")));
        assert_eq!(name("cseq"), Cow::<str>::Owned("cseq".into()));
        assert!(matches!(name("X-Custom"), Cow::Owned(n) if n == "X-Custom"));
    }

    #[test]
    fn compact_names_expand_and_long_names_stay() {
        assert_eq!(expand("v"), "Via");
        assert_eq!(expand("I"), "Call-ID");
        assert_eq!(expand("o"), "Event");
        assert_eq!(expand("x"), "x");
        assert_eq!(expand("Via"), "Via");
    }
}
