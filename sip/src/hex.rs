//! Lower-case hex written straight into its string. The `hex` crate's `encode` collects a `char`
//! iterator: about 1,200 instructions for a 16-byte digest, a few percent of a registration's
//! (nonces, HA1s, digests and branches are all hex).

pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let bytes = bytes.as_ref();
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.extend_from_slice(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]);
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_hex_crate() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(super::encode(&all), hex::encode(&all));
        assert_eq!(super::encode([]), "");
    }
}
