//! Digest authentication (RFC 7616, RFC 2617) with MD5 and SHA-256, `qop=auth`, HA1 from the
//! directory, stateless HMAC nonces that expire (answered with `stale=true`), nonce-count replay
//! protection, and constant-time comparison. Written here because rsip's digest module names
//! SHA-256 wrongly, cannot start from HA1 and compares in variable time.

use crate::directory::User;
use crate::sip::hashing::TrustedKeyMap;
use crate::sip::params::parse_auth_params;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

pub use crate::config::Algorithm;

/// H(data) in hex, with the algorithm's hash.
pub fn hash(alg: Algorithm, data: &str) -> String {
    hash_joined(alg, &[data])
}

/// H(part1:part2:...) in hex: the digest's inputs are fed in pieces, never joined in a string.
fn hash_joined(alg: Algorithm, parts: &[&str]) -> String {
    fn run<D: Digest>(parts: &[&str]) -> String {
        let mut d = D::new();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                d.update(b":");
            }
            d.update(part.as_bytes());
        }
        parley_sip::hex::encode(d.finalize())
    }
    match alg {
        Algorithm::Md5 => run::<Md5>(parts),
        Algorithm::Sha256 => run::<Sha256>(parts),
    }
}

/// HA1 = H(username:realm:password), what the directory stores instead of a password.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    hash_joined(alg, &[username, realm, password])
}

/// The outcome of checking credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Right password, but the nonce expired or its count was replayed: challenge with stale=true.
    Stale,
    /// Wrong credentials (or unknown user): challenge again, the same as for any failure.
    Fail(&'static str),
}

/// Why right credentials fail: their nonce is not one of ours (e.g. issued before a restart).
pub const FOREIGN_NONCE: &str = "nonce not issued here";

/// Digest challenges and checks; the realm is the domain of the user being authenticated.
pub struct DigestAuth {
    algorithms: Vec<Algorithm>,
    nonce_ttl: Duration,
    /// The nonces' MAC, keyed once with a random secret (cloned for each use: keying costs two
    /// of the four hash blocks of a MAC).
    keyed_mac: Hmac<Sha256>,
    /// The nonce counts seen, bounded by expiry and by [`MAX_TRACKED_NONCES`].
    counts: Mutex<NonceCounts>,
}

/// The nonces in use. At a few thousand authentications a second each with a fresh challenge
/// (a benchmark, a flood of new clients) the lifetime alone would let it grow past a million.
const MAX_TRACKED_NONCES: usize = 1_000_000;

/// A nonce we issued, by what it carries: its issue time (seconds) and its random part. Sixteen
/// bytes instead of the 64 characters of the nonce: the MAC was checked on the way in.
type NonceKey = (u64, u64);

#[derive(Default)]
struct NonceCounts {
    /// Highest nonce count seen per nonce still in use.
    seen: TrustedKeyMap<NonceKey, u64>,
    /// Nonces issued before this second were dropped from `seen` to make room when it was full:
    /// one of them that is not in `seen` counts as used (stale), so dropping never allows a replay.
    floor: u64,
}

impl NonceCounts {
    /// Keeps the newest half of the table (by issue second) when it is full of live nonces.
    fn make_room(&mut self) {
        let mut stamps: Vec<u64> = self.seen.keys().map(|k| k.0).collect();
        let keep = MAX_TRACKED_NONCES / 2;
        if stamps.len() <= keep {
            return;
        }
        let at = stamps.len() - keep;
        let (_, cutoff, _) = stamps.select_nth_unstable(at);
        let cutoff = *cutoff;
        self.seen.retain(|k, _| k.0 >= cutoff);
        self.floor = self.floor.max(cutoff);
    }
}

impl DigestAuth {
    pub fn new(algorithms: Vec<Algorithm>, nonce_ttl: Duration) -> DigestAuth {
        let secret: [u8; 32] = rand::random();
        let keyed_mac = Hmac::<Sha256>::new_from_slice(&secret).expect("any key length");
        DigestAuth { algorithms, nonce_ttl, keyed_mac, counts: Mutex::default() }
    }

    fn mac(&self, stamp: &str) -> String {
        let mut mac = self.keyed_mac.clone();
        mac.update(stamp.as_bytes());
        parley_sip::hex::encode(&mac.finalize().into_bytes()[..16])
    }

    fn new_nonce(&self, now: SystemTime) -> String {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut stamp = [0u8; 16];
        stamp[..8].copy_from_slice(&secs.to_be_bytes());
        stamp[8..].copy_from_slice(&rand::random::<[u8; 8]>());
        let stamp = parley_sip::hex::encode(stamp);
        let mac = self.mac(&stamp);
        stamp + &mac
    }

    /// Checks a nonce we issued: `Some(age)` if genuine.
    fn nonce_age(&self, nonce: &str, now: SystemTime) -> Option<Duration> {
        if nonce.len() != 64 || !nonce.is_ascii() {
            return None;
        }
        let (stamp, mac) = nonce.split_at(32);
        if !bool::from(self.mac(stamp).as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        stamp_age(nonce, now)
    }

    /// Whether a nonce in the count table, issued at second `issued`, is within its lifetime.
    fn tracked_is_live(&self, issued: u64, now: SystemTime) -> bool {
        let age = now.duration_since(UNIX_EPOCH + Duration::from_secs(issued)).unwrap_or_default();
        age <= self.nonce_ttl
    }

    /// Challenge header values, one per algorithm in order of preference (RFC 8760).
    pub fn challenges(&self, realm: &str, stale: bool, now: SystemTime) -> Vec<String> {
        let nonce = self.new_nonce(now);
        self.algorithms
            .iter()
            .map(|alg| {
                let stale = if stale { ", stale=true" } else { "" };
                let parts = [
                    "Digest realm=\"",
                    realm,
                    "\", nonce=\"",
                    &nonce,
                    "\", algorithm=",
                    alg.token(),
                    ", qop=\"auth\"",
                    stale,
                ];
                parts.concat()
            })
            .collect()
    }

    /// Verifies an Authorization or Proxy-Authorization value for `method` against `user`
    /// (None: unknown user, checked against a dummy so the work and the answer look the same).
    pub fn verify(&self, header: &str, realm: &str, method: &str, user: Option<&User>, now: SystemTime) -> Verdict {
        let Some(rest) = header.trim().strip_prefix("Digest") else {
            return Verdict::Fail("not digest");
        };
        let params = parse_auth_params(rest);
        let get = |k: &str| params.iter().find(|(name, _)| name == k).map(|(_, v)| v.as_ref());
        let (Some(username), Some(their_realm), Some(nonce), Some(uri), Some(response)) =
            (get("username"), get("realm"), get("nonce"), get("uri"), get("response"))
        else {
            return Verdict::Fail("incomplete credentials");
        };
        if their_realm != realm {
            return Verdict::Fail("wrong realm");
        }
        let alg = match get("algorithm") {
            None => Algorithm::Md5,
            Some(t) => match Algorithm::from_token(t) {
                Some(a) if self.algorithms.contains(&a) => a,
                _ => return Verdict::Fail("algorithm not offered"),
            },
        };
        const DUMMY_HA1: &str = "0000000000000000000000000000000000000000000000000000000000000000";
        let stored = user.and_then(|u| match alg {
            Algorithm::Md5 => u.ha1_md5.as_deref(),
            Algorithm::Sha256 => u.ha1_sha256.as_deref(),
        });
        let ha1 = stored.unwrap_or(DUMMY_HA1).to_ascii_lowercase();
        let ha2 = hash_joined(alg, &[method, uri]);
        let qop = get("qop");
        let nc = get("nc");
        let expected = match qop {
            Some("auth") => {
                let (Some(nc), Some(cnonce)) = (nc, get("cnonce")) else {
                    return Verdict::Fail("qop without nc or cnonce");
                };
                hash_joined(alg, &[&ha1, nonce, nc, cnonce, "auth", &ha2])
            }
            None => hash_joined(alg, &[&ha1, nonce, &ha2]),
            Some(_) => return Verdict::Fail("unsupported qop"),
        };
        let matches: bool = expected.as_bytes().ct_eq(response.to_ascii_lowercase().as_bytes()).into();
        let Some(user) = user.filter(|_| stored.is_some()) else {
            return Verdict::Fail("unknown user");
        };
        if !matches || username != user.username() {
            return Verdict::Fail("wrong credentials");
        }
        match self.nonce_age(nonce, now) {
            None => Verdict::Fail(FOREIGN_NONCE),
            Some(age) if age > self.nonce_ttl => Verdict::Stale,
            Some(_) => self.check_count(nonce, nc, now),
        }
    }

    /// Replay protection: each use of a nonce must carry a higher nonce count; a nonce without
    /// qop may be used once.
    fn check_count(&self, nonce: &str, nc: Option<&str>, now: SystemTime) -> Verdict {
        let count = match nc {
            Some(nc) => match u64::from_str_radix(nc, 16) {
                Ok(n) => n,
                Err(_) => return Verdict::Fail("bad nonce count"),
            },
            None => 1,
        };
        // `verify` checked the MAC, so the nonce is 64 characters of ours.
        let Some(key) = nonce_key(nonce) else { return Verdict::Fail(FOREIGN_NONCE) };
        let mut counts = self.counts.lock().expect("nonce table");
        if !counts.seen.contains_key(&key) {
            if key.0 < counts.floor {
                return Verdict::Stale;
            }
            if counts.seen.len() >= MAX_TRACKED_NONCES {
                counts.seen.retain(|k, _| self.tracked_is_live(k.0, now));
                if counts.seen.len() >= MAX_TRACKED_NONCES {
                    counts.make_room();
                    if key.0 < counts.floor || counts.seen.len() >= MAX_TRACKED_NONCES {
                        return Verdict::Stale;
                    }
                }
            }
        }
        let seen = counts.seen.entry(key).or_insert(0);
        if count <= *seen || (nc.is_none() && *seen > 0) {
            return Verdict::Stale;
        }
        *seen = count;
        Verdict::Ok
    }

    /// Drops counts of expired nonces (run periodically).
    pub fn purge(&self, now: SystemTime) {
        let mut counts = self.counts.lock().expect("nonce table");
        counts.seen.retain(|k, _| self.tracked_is_live(k.0, now));
    }
}

/// The issue second and random part a nonce of ours carries.
fn nonce_key(nonce: &str) -> Option<NonceKey> {
    Some((u64::from_str_radix(nonce.get(..16)?, 16).ok()?, u64::from_str_radix(nonce.get(16..32)?, 16).ok()?))
}

/// Age of a nonce by the issue time it carries (its first 16 hex digits).
fn stamp_age(nonce: &str, now: SystemTime) -> Option<Duration> {
    let secs = u64::from_str_radix(nonce.get(..16)?, 16).ok()?;
    Some(now.duration_since(UNIX_EPOCH + Duration::from_secs(secs)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            address: "alice@example.test".into(),
            enabled: true,
            home_server: None,
            ha1_md5: Some(ha1(Algorithm::Md5, "alice", "example.test", "secret")),
            ha1_sha256: Some(ha1(Algorithm::Sha256, "alice", "example.test", "secret")),
        }
    }

    /// What a client computes (RFC 7616 section 3.4.1).
    fn answer(challenge: &str, alg: Algorithm, password: &str, nc: &str) -> String {
        let nonce = challenge.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap();
        let ha1 = ha1(alg, "alice", "example.test", password);
        let ha2 = hash(alg, "REGISTER:sip:example.test");
        let resp = hash(alg, &format!("{ha1}:{nonce}:{nc}:c0ffee:auth:{ha2}"));
        format!(
            "Digest username=\"alice\", realm=\"example.test\", nonce=\"{nonce}\", uri=\"sip:example.test\", \
             response=\"{resp}\", algorithm={}, qop=auth, nc={nc}, cnonce=\"c0ffee\"",
            alg.token()
        )
    }

    #[test]
    fn md5_and_sha256_verify_and_replays_are_stale() {
        let auth = DigestAuth::new(vec![Algorithm::Sha256, Algorithm::Md5], Duration::from_secs(60));
        let now = SystemTime::now();
        let ch = auth.challenges("example.test", false, now);
        assert!(ch[0].contains("algorithm=SHA-256") && ch[1].contains("algorithm=MD5"));
        for (i, alg) in [Algorithm::Sha256, Algorithm::Md5].into_iter().enumerate() {
            let ch = auth.challenges("example.test", false, now); // a fresh nonce for each algorithm's run
            let creds = answer(&ch[i], alg, "secret", "00000001");
            assert_eq!(auth.verify(&creds, "example.test", "REGISTER", Some(&user()), now), Verdict::Ok);
            assert_eq!(
                auth.verify(&creds, "example.test", "REGISTER", Some(&user()), now),
                Verdict::Stale,
                "replayed nc"
            );
            let next = answer(&ch[i], alg, "secret", "00000002");
            assert_eq!(auth.verify(&next, "example.test", "REGISTER", Some(&user()), now), Verdict::Ok);
        }
    }

    #[test]
    fn used_nonces_are_forgotten_once_expired() {
        let auth = DigestAuth::new(vec![Algorithm::Md5], Duration::from_secs(60));
        let now = SystemTime::now();
        let ch = auth.challenges("example.test", false, now);
        let creds = answer(&ch[0], Algorithm::Md5, "secret", "00000001");
        assert_eq!(auth.verify(&creds, "example.test", "REGISTER", Some(&user()), now), Verdict::Ok);
        auth.purge(now + Duration::from_secs(30));
        assert_eq!(auth.counts.lock().unwrap().seen.len(), 1, "still live");
        auth.purge(now + Duration::from_secs(61));
        assert!(auth.counts.lock().unwrap().seen.is_empty());
    }

    #[test]
    fn a_full_nonce_table_keeps_the_newest_half_and_what_it_dropped_stays_used() {
        let auth = DigestAuth::new(vec![Algorithm::Md5], Duration::from_secs(300));
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let old = auth.challenges("example.test", false, now - Duration::from_secs(200));
        {
            // Full of live nonces, issued over the last 100 seconds.
            let mut c = auth.counts.lock().unwrap();
            for i in 0..MAX_TRACKED_NONCES as u64 {
                c.seen.insert((secs - 100 + i % 100, i), 1);
            }
        }
        let fresh = auth.challenges("example.test", false, now);
        let creds = answer(&fresh[0], Algorithm::Md5, "secret", "00000001");
        assert_eq!(auth.verify(&creds, "example.test", "REGISTER", Some(&user()), now), Verdict::Ok, "room was made");
        let left = auth.counts.lock().unwrap().seen.len();
        assert!(left <= MAX_TRACKED_NONCES * 6 / 10, "{left} nonces kept");
        assert_eq!(auth.verify(&creds, "example.test", "REGISTER", Some(&user()), now), Verdict::Stale, "replay");
        // A nonce issued before the ones dropped, never seen: it may have been, so it is stale.
        let creds = answer(&old[0], Algorithm::Md5, "secret", "00000001");
        assert_eq!(auth.verify(&creds, "example.test", "REGISTER", Some(&user()), now), Verdict::Stale);
    }

    #[test]
    fn wrong_password_and_unknown_user_look_the_same() {
        let auth = DigestAuth::new(vec![Algorithm::Md5], Duration::from_secs(60));
        let now = SystemTime::now();
        let ch = &auth.challenges("example.test", false, now)[0];
        let wrong = answer(ch, Algorithm::Md5, "guess", "00000001");
        assert!(matches!(auth.verify(&wrong, "example.test", "REGISTER", Some(&user()), now), Verdict::Fail(_)));
        let right = answer(ch, Algorithm::Md5, "secret", "00000001");
        assert!(matches!(auth.verify(&right, "example.test", "REGISTER", None, now), Verdict::Fail(_)));
        let sha = answer(ch, Algorithm::Sha256, "secret", "00000001");
        assert!(
            matches!(auth.verify(&sha, "example.test", "REGISTER", Some(&user()), now), Verdict::Fail(_)),
            "not offered"
        );
    }

    #[test]
    fn expired_nonce_is_stale_and_forged_nonce_fails() {
        let auth = DigestAuth::new(vec![Algorithm::Md5], Duration::from_secs(60));
        let then = SystemTime::now() - Duration::from_secs(120);
        let ch = &auth.challenges("example.test", false, then)[0];
        let creds = answer(ch, Algorithm::Md5, "secret", "00000001");
        assert_eq!(auth.verify(&creds, "example.test", "REGISTER", Some(&user()), SystemTime::now()), Verdict::Stale);
        let forged = ch.replacen("nonce=\"0", "nonce=\"1", 1);
        let creds = answer(&forged, Algorithm::Md5, "secret", "00000001");
        assert!(matches!(
            auth.verify(&creds, "example.test", "REGISTER", Some(&user()), SystemTime::now()),
            Verdict::Fail(_)
        ));
    }
}
