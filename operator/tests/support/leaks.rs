//! No Secret value leaves its Secret: the operator's log (this process's, captured from the first
//! scenario on), the namespace's Events and ConfigMaps, and the status of every Parley resource
//! are searched for the values of the namespace's Secrets.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::ListParams;
use parley_operator::crd::{CommunicationsDomain, FrontEnd, HomeServer};

use super::Harness;

/// Everything the operator logged in this process, at debug level.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,parley_operator=debug,kube=warn"))
            .with_writer(move || Sink(sink.clone()))
            .with_ansi(false)
            .try_init();
        buffer
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing the operator's log (the harness calls it before any operator starts).
pub fn capture() {
    log();
}

/// What would betray a Secret value: a private key's base64 lines, or a password whole and in
/// base64. Certificates (`*.crt`) are public, the administrator's DN is a name.
fn needles(key: &str, value: &str) -> Vec<String> {
    use base64::Engine;
    if key.ends_with(".crt") || key == "bindDn" {
        return Vec::new();
    }
    if value.contains("-----BEGIN") {
        return value
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_string)
            .collect();
    }
    let value = value.trim();
    if value.len() < 8 {
        return Vec::new();
    }
    vec![value.to_string(), base64::engine::general_purpose::STANDARD.encode(value)]
}

impl Harness {
    /// Fails when a value of a Secret of the namespace appears in the operator's log, an Event, a
    /// ConfigMap or a Parley resource's status. Returns how many values were looked for.
    pub async fn assert_no_secret_value_leaked(&self) -> usize {
        let secrets = self.api::<Secret>().list(&ListParams::default()).await.expect("list Secrets").items;
        let mut wanted = Vec::new();
        for s in &secrets {
            let name = s.metadata.name.clone().unwrap_or_default();
            for (key, value) in s.data.iter().flatten() {
                for needle in needles(key, &String::from_utf8_lossy(&value.0)) {
                    wanted.push((format!("key {key} of Secret {name}"), needle));
                }
            }
        }
        assert!(!wanted.is_empty(), "the scenario made no Secret value to look for");

        let mut places: Vec<(String, String)> =
            vec![("the operator's log".into(), String::from_utf8_lossy(&log().lock().unwrap()).into_owned())];
        for e in self.api::<Event>().list(&ListParams::default()).await.expect("list Events").items {
            places.push((format!("Event {}", e.metadata.name.clone().unwrap_or_default()), json(&e)));
        }
        for c in self.api::<ConfigMap>().list(&ListParams::default()).await.expect("list ConfigMaps").items {
            places.push((format!("ConfigMap {}", c.metadata.name.clone().unwrap_or_default()), json(&c.data)));
        }
        for d in self.api::<CommunicationsDomain>().list(&ListParams::default()).await.expect("list").items {
            places.push((format!("the status of CommunicationsDomain {}", name(&d.metadata)), json(&d.status)));
        }
        for h in self.api::<HomeServer>().list(&ListParams::default()).await.expect("list").items {
            places.push((format!("the status of HomeServer {}", name(&h.metadata)), json(&h.status)));
        }
        for f in self.api::<FrontEnd>().list(&ListParams::default()).await.expect("list").items {
            places.push((format!("the status of FrontEnd {}", name(&f.metadata)), json(&f.status)));
        }
        for (secret, needle) in &wanted {
            for (place, text) in &places {
                // The value itself is not printed: the failure would leak it into the test log.
                assert!(!text.contains(needle.as_str()), "a value of {secret} appears in {place}");
            }
        }
        println!(
            "{} Secret values looked for in {} places: none found; log {} bytes",
            wanted.len(),
            places.len(),
            places[0].1.len()
        );
        wanted.len()
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn name(m: &kube::api::ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}
