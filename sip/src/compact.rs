//! Compact header names (RFC 3261 section 7.3.3 and later RFCs) and their long forms.

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

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn compact_names_expand_and_long_names_stay() {
        assert_eq!(expand("v"), "Via");
        assert_eq!(expand("I"), "Call-ID");
        assert_eq!(expand("o"), "Event");
        assert_eq!(expand("x"), "x");
        assert_eq!(expand("Via"), "Via");
    }
}
