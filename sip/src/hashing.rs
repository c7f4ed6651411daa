//! A hasher for map keys that no peer chooses: keys that are already keyed hashes (a server
//! transaction's), random values the server issued (nonces) and counters (task ids).
//!
//! The std default, SipHash with random keys, is there so that a peer cannot aim many keys at one
//! bucket. For these keys it bought nothing and cost about a hundred instructions a lookup, several
//! lookups a request (callgrind, 2026-12-05). Keys a peer writes (user names, Call-IDs, branches)
//! stay in SipHash maps.

use std::hash::{BuildHasherDefault, Hasher};

/// Mixes each word in with a rotate, an xor and a multiply (FxHash's step): the multiply carries
/// every bit of the key into the high bits, where hashbrown takes its control byte.
#[derive(Default)]
pub struct TrustedKeyHasher(u64);

impl Hasher for TrustedKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
}

/// A `HashMap` for keys no peer chooses (see the module's note).
pub type TrustedKeyMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<TrustedKeyHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, Hash};

    fn hash(key: impl Hash) -> u64 {
        BuildHasherDefault::<TrustedKeyHasher>::default().hash_one(key)
    }

    #[test]
    fn counters_spread_over_the_control_bits() {
        // hashbrown matches on the top 7 bits: consecutive task ids must not share them all.
        let tops: std::collections::HashSet<u64> = (0u64..1000).map(|n| hash(n) >> 57).collect();
        assert!(tops.len() > 100, "{} distinct control values", tops.len());
    }

    #[test]
    fn every_part_of_a_key_counts() {
        assert_ne!(hash(1u128), hash(1u128 << 64));
        assert_ne!(hash((1u64, 2u64)), hash((2u64, 1u64)));
        assert_ne!(hash(&b"abcdefgh1"[..]), hash(&b"abcdefgh2"[..]));
    }
}
