//! The bodies of NOTIFY: watcher information (RFC 3857) and resource lists (RFC 4662 RLMI in
//! multipart/related).

use super::state::Subscription;
use std::fmt::Write as _;

pub const PIDF: &str = "application/pidf+xml";
pub const WINFO: &str = "application/watcherinfo+xml";

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// RFC 3857 watcher information for `resource`: every presence subscription to it, with
/// `active` for allowed watchers and `terminated`/`rejected` for politely blocked ones.
pub fn winfo(resource: &str, version: u32, watchers: &[(&Subscription, bool)]) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<watcherinfo xmlns=\"urn:ietf:params:xml:ns:watcherinfo\" \
         version=\"{version}\" state=\"full\">\n<watcher-list resource=\"sip:{}\" package=\"presence\">\n",
        xml_escape(resource)
    );
    for (sub, allowed) in watchers {
        let (status, event) = if *allowed { ("active", "subscribe") } else { ("terminated", "rejected") };
        let _ = writeln!(
            out,
            "<watcher id=\"{}\" status=\"{status}\" event=\"{event}\">sip:{}</watcher>",
            xml_escape(&sub.id),
            xml_escape(&sub.watcher)
        );
    }
    out.push_str("</watcher-list>\n</watcherinfo>\n");
    out
}

/// An RLMI multipart body for a list: `resources` are (address, PIDF body) of the resources this
/// NOTIFY carries (all of them with `full`, only the changed ones otherwise).
/// Returns the Content-Type header value and the body.
pub fn rlmi(list_uri: &str, version: u32, full: bool, resources: &[(String, String)]) -> (String, String) {
    let boundary = format!("parley-{:016x}", rand::random::<u64>());
    let mut list = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<list xmlns=\"urn:ietf:params:xml:ns:rlmi\" uri=\"{}\" \
         version=\"{version}\" fullState=\"{full}\">\n",
        xml_escape(list_uri)
    );
    for (aor, _) in resources {
        let a = xml_escape(aor);
        let _ =
            writeln!(list, "<resource uri=\"sip:{a}\"><instance id=\"{a}\" state=\"active\" cid=\"{a}\"/></resource>");
    }
    list.push_str("</list>\n");
    let mut body = String::new();
    let _ = write!(
        body,
        "--{boundary}\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <rlmi@parley>\r\n\
         Content-Type: application/rlmi+xml;charset=\"UTF-8\"\r\n\r\n{list}\r\n"
    );
    for (aor, pidf) in resources {
        let _ = write!(
            body,
            "--{boundary}\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <{aor}>\r\n\
             Content-Type: {PIDF};charset=\"UTF-8\"\r\n\r\n{pidf}\r\n"
        );
    }
    let _ = write!(body, "--{boundary}--\r\n");
    let content_type =
        format!("multipart/related;type=\"application/rlmi+xml\";start=\"<rlmi@parley>\";boundary=\"{boundary}\"");
    (content_type, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlmi_lists_every_resource_with_its_part() {
        let (ct, body) = rlmi("sip:a+contacts@x", 3, false, &[("b@x".into(), "<pidf-b/>".into())]);
        assert!(ct.starts_with("multipart/related;type=\"application/rlmi+xml\""));
        let boundary = ct.split("boundary=\"").nth(1).unwrap().trim_end_matches('"');
        assert_eq!(body.matches(&format!("--{boundary}")).count(), 3);
        assert!(body.contains("fullState=\"false\"") && body.contains("version=\"3\""));
        assert!(body.contains("cid=\"b@x\"") && body.contains("Content-ID: <b@x>\r\n") && body.contains("<pidf-b/>"));
    }
}
