//! PIDF documents the tests publish (alice's; other users replace the entity).

pub const PIDF_AWAY: &str = "<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
    xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" \
    entity=\"sip:alice@example.test\"><tuple id=\"pc\"><status><basic>open</basic></status></tuple>\
    <dm:person id=\"p\"><rpid:activities><rpid:away/></rpid:activities></dm:person></presence>";
pub const PIDF_ONLINE: &str = "<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
    entity=\"sip:alice@example.test\"><tuple id=\"pc\"><status><basic>open</basic></status>\
    <note>Online and typing</note></tuple></presence>";
