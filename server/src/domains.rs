//! The SIP domains a server serves: its own, the aliases that stand for it (e.g. its IP address),
//! and the ones the directory admits (`prep domainadd`), re-read from the directory now and then (by the IO layer).

use crate::sip::uri::SipUri;

pub struct Domains {
    primary: String,
    /// Hosts that mean `primary` in addresses (lower-case).
    aliases: Vec<String>,
    /// Further domains whose users the directory holds (lower-case).
    admitted: Vec<String>,
}

impl Domains {
    pub fn new(primary: &str, aliases: &[String]) -> Domains {
        Domains {
            primary: primary.to_ascii_lowercase(),
            aliases: aliases.iter().map(|a| a.to_ascii_lowercase()).collect(),
            admitted: Vec::new(),
        }
    }

    pub fn primary(&self) -> &str {
        &self.primary
    }

    /// The served domain a URI host stands for (the primary domain for an alias).
    pub fn domain_of(&self, host: &str) -> Option<&str> {
        if host == self.primary || self.aliases.iter().any(|a| a == host) {
            return Some(&self.primary);
        }
        self.admitted.iter().find(|d| *d == host).map(String::as_str)
    }

    pub fn is_local(&self, host: &str) -> bool {
        self.domain_of(host).is_some()
    }

    /// The address of record (`user@domain`) a URI names, if its domain is served here.
    pub fn aor(&self, uri: &SipUri) -> Option<String> {
        let user = uri.user()?;
        Some([user, "@", self.domain_of(uri.host())?].concat())
    }

    /// Takes the directory's list of domains (the primary among them or not) as the admitted ones.
    pub fn admit(&mut self, mut domains: Vec<String>) {
        domains.retain(|d| *d != self.primary);
        if self.admitted != domains {
            tracing::info!(domains = ?domains, "serving users of these domains too");
            self.admitted = domains;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_mean_the_primary_domain_and_admitted_domains_keep_their_name() {
        let mut d = Domains::new("Example.Test", &["127.0.0.1".into()]);
        d.admit(vec!["example.test".into(), "partner.test".into()]);
        let aor = |u: &str| d.aor(&SipUri::parse(u).unwrap());
        assert_eq!(aor("sip:alice@example.test").as_deref(), Some("alice@example.test"));
        assert_eq!(aor("sip:alice@127.0.0.1").as_deref(), Some("alice@example.test"));
        assert_eq!(aor("sip:dave@partner.test").as_deref(), Some("dave@partner.test"));
        assert_eq!(aor("sip:eve@elsewhere.test"), None);
        assert_eq!(aor("sip:example.test"), None);
    }
}
