//! PIDF documents (RFC 3863): how available a document says its presentity is, and the
//! documents the server writes itself (registered without publication, offline).

/// How available a document says the presentity is; higher wins when devices are composed.
/// closed = 0, open but busy / on the phone = 1, open but away = 2, open = 3.
pub fn availability(body: &str) -> u8 {
    let lower = body.to_ascii_lowercase();
    let basic_open =
        lower.split("basic>").nth(1).map(|rest| rest.split('<').next().unwrap_or("").trim() == "open").unwrap_or(false);
    if !basic_open {
        return 0;
    }
    let has = |activity: &str| lower.contains(&format!(":{activity}/>")) || lower.contains(&format!("<{activity}/>"));
    if has("busy") || has("on-the-phone") || has("meeting") {
        1
    } else if has("away") || has("vacation") || has("sleeping") || has("appointment") {
        2
    } else {
        3
    }
}

/// Whether a PUBLISH body is a PIDF document at all.
pub fn validate(body: &str) -> Result<(), String> {
    if !body.contains("urn:ietf:params:xml:ns:pidf") || !body.contains("presence") {
        return Err("body is not a PIDF document".into());
    }
    let lower = body.to_ascii_lowercase();
    let mut statuses = lower.split("basic>").skip(1).step_by(2).map(|rest| rest.split('<').next().unwrap_or("").trim());
    let first = statuses.next().ok_or("PIDF document has no basic status")?;
    // RFC 3863 4.1.4: basic is open or closed; anything else makes the document invalid.
    if std::iter::once(first).chain(statuses).any(|b| b != "open" && b != "closed") {
        return Err("basic status must be open or closed".into());
    }
    Ok(())
}

fn document(entity: &str, basic: &str, note: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{entity}\">\n\
         <tuple id=\"parley\"><status><basic>{basic}</basic></status><note>{note}</note></tuple>\n\
         </presence>\n"
    )
}

/// A registered user who published nothing: online.
pub fn registered(entity: &str) -> String {
    document(entity, "open", "Online")
}

/// No registration and no publication, or a watcher politely blocked: offline.
pub fn offline(entity: &str) -> String {
    document(entity, "closed", "Offline")
}

#[cfg(test)]
mod tests {
    use super::*;

    const AWAY: &str = r#"<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:a@x">
        <tuple id="t"><status><basic>open</basic></status></tuple><dm:person><rpid:activities><rpid:away/></rpid:activities></dm:person></presence>"#;

    #[test]
    fn availability_orders_states() {
        assert_eq!(availability(&offline("a@x")), 0);
        assert_eq!(availability(&registered("a@x")), 3);
        assert_eq!(availability(AWAY), 2);
        assert_eq!(availability(&AWAY.replace("away", "busy")), 1);
        assert!(validate(AWAY).is_ok());
        assert!(validate("hello").is_err());
        assert!(validate(&AWAY.replace("<basic>open", "<basic>unknown")).is_err());
    }
}
