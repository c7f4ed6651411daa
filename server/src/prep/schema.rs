//! Parley's directory schema, defined once and rendered for OpenLDAP (`cn=schema,cn=config`
//! values) and for Active Directory (attributeSchema/classSchema LDIF for `ldifde`).
//!
//! Every OID lives under [`ARC`]: attribute types under `ARC.1`, object classes under `ARC.2`.
//! OIDs are never reused: a retired definition keeps its number.

/// Parley's OID arc. 61626 stands in for Parley's IANA Private Enterprise Number; this is the
/// only place that names it.
pub const ARC: &str = "1.3.6.1.4.1.61626.1";

/// Attribute names, as the rest of the code refers to them.
pub mod attrs {
    pub const SIP_ADDRESS: &str = "parleySipAddress";
    pub const ENABLED: &str = "parleyEnabled";
    pub const HOME_SERVER: &str = "parleyHomeServer";
    pub const HA1_MD5: &str = "parleyHA1MD5";
    pub const HA1_SHA256: &str = "parleyHA1SHA256";
    pub const SIP_DOMAIN: &str = "parleySipDomain";
    pub const SERVER_ADDRESS: &str = "parleyServerAddress";
    pub const USER_BASE_DN: &str = "parleyUserBaseDN";
    pub const CAPACITY: &str = "parleyCapacity";
    pub const SERVER_API: &str = "parleyServerApi";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// ASCII string, compared ignoring case (addresses, domains, host:port).
    Ia5IgnoreCase,
    /// ASCII string, compared exactly (hex digests).
    Ia5Exact,
    /// Unicode string, compared ignoring case (names).
    DirectoryString,
    Boolean,
    Dn,
    /// A whole number (capacities).
    Integer,
}

impl Syntax {
    fn openldap(self) -> &'static str {
        match self {
            Syntax::Ia5IgnoreCase => {
                "EQUALITY caseIgnoreIA5Match SUBSTR caseIgnoreIA5SubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.26"
            }
            Syntax::Ia5Exact => "EQUALITY caseExactIA5Match SYNTAX 1.3.6.1.4.1.1466.115.121.1.26",
            Syntax::DirectoryString => {
                "EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15"
            }
            Syntax::Boolean => "EQUALITY booleanMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.7",
            Syntax::Dn => "EQUALITY distinguishedNameMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.12",
            Syntax::Integer => {
                "EQUALITY integerMatch ORDERING integerOrderingMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27"
            }
        }
    }

    /// Active Directory `attributeSyntax` and `oMSyntax` (and `oMObjectClass`, base64, for DNs).
    fn ad(self) -> (&'static str, u32, Option<&'static str>) {
        match self {
            Syntax::Ia5IgnoreCase | Syntax::Ia5Exact => ("2.5.5.5", 22, None),
            Syntax::DirectoryString => ("2.5.5.12", 64, None),
            Syntax::Boolean => ("2.5.5.8", 1, None),
            Syntax::Dn => ("2.5.5.1", 127, Some("KwwCh3McAIVK")),
            Syntax::Integer => ("2.5.5.9", 2, None),
        }
    }
}

pub struct AttributeType {
    pub name: &'static str,
    /// Active Directory common name (`cn` of the attributeSchema object).
    pub ad_cn: &'static str,
    /// Last component under `ARC.1`.
    pub number: u32,
    pub description: &'static str,
    pub syntax: Syntax,
    pub single_valued: bool,
    /// Indexed for equality (OpenLDAP `olcDbIndex` is left to the administrator; AD `searchFlags`).
    pub indexed: bool,
    /// Secret (digest HA1): AD marks it confidential (`searchFlags` 128), so that reading it
    /// needs an explicit grant; OpenLDAP gets the same effect from `prep domain`'s access rules.
    pub confidential: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Structural,
    Auxiliary,
}

pub struct ObjectClass {
    pub name: &'static str,
    pub ad_cn: &'static str,
    /// Last component under `ARC.2`.
    pub number: u32,
    pub description: &'static str,
    pub kind: Kind,
    pub must: &'static [&'static str],
    pub may: &'static [&'static str],
    /// Active Directory classes an entry of this class may be created under (structural only).
    pub ad_superiors: &'static [&'static str],
}

pub const ATTRIBUTE_TYPES: &[AttributeType] = &[
    AttributeType {
        name: attrs::SIP_ADDRESS,
        ad_cn: "Parley-Sip-Address",
        number: 1,
        description: "SIP address of record without scheme (user@domain)",
        syntax: Syntax::Ia5IgnoreCase,
        single_valued: true,
        indexed: true,
        confidential: false,
    },
    AttributeType {
        name: attrs::ENABLED,
        ad_cn: "Parley-Enabled",
        number: 2,
        description: "Whether the user may sign in to Parley",
        syntax: Syntax::Boolean,
        single_valued: true,
        indexed: false,
        confidential: false,
    },
    AttributeType {
        name: attrs::HOME_SERVER,
        ad_cn: "Parley-Home-Server",
        number: 3,
        description: "Name of the Home Server the user is homed on",
        syntax: Syntax::DirectoryString,
        single_valued: true,
        indexed: true,
        confidential: false,
    },
    AttributeType {
        name: attrs::HA1_MD5,
        ad_cn: "Parley-HA1-MD5",
        number: 4,
        description: "Digest HA1, MD5(user:realm:password), hex",
        syntax: Syntax::Ia5Exact,
        single_valued: true,
        indexed: false,
        confidential: true,
    },
    AttributeType {
        name: attrs::HA1_SHA256,
        ad_cn: "Parley-HA1-SHA256",
        number: 5,
        description: "Digest HA1, SHA-256(user:realm:password), hex",
        syntax: Syntax::Ia5Exact,
        single_valued: true,
        indexed: false,
        confidential: true,
    },
    AttributeType {
        name: attrs::SIP_DOMAIN,
        ad_cn: "Parley-Sip-Domain",
        number: 6,
        description: "A SIP domain served by this Parley deployment",
        syntax: Syntax::Ia5IgnoreCase,
        single_valued: false,
        indexed: true,
        confidential: false,
    },
    AttributeType {
        name: attrs::SERVER_ADDRESS,
        ad_cn: "Parley-Server-Address",
        number: 7,
        description: "Address (host:port) at which a Parley server is reached",
        syntax: Syntax::Ia5IgnoreCase,
        single_valued: false,
        indexed: false,
        confidential: false,
    },
    AttributeType {
        name: attrs::USER_BASE_DN,
        ad_cn: "Parley-User-Base-DN",
        number: 8,
        description: "Base DN under which users of an admitted domain live",
        syntax: Syntax::Dn,
        single_valued: true,
        indexed: false,
        confidential: false,
    },
    AttributeType {
        name: attrs::CAPACITY,
        ad_cn: "Parley-Capacity",
        number: 9,
        description: "How many users a Home Server may be given (placement and drain)",
        syntax: Syntax::Integer,
        single_valued: true,
        indexed: false,
        confidential: false,
    },
    AttributeType {
        name: attrs::SERVER_API,
        ad_cn: "Parley-Server-Api",
        number: 10,
        description: "URL of a Home Server operations API (http://host:port), used to move users",
        syntax: Syntax::Ia5Exact,
        single_valued: true,
        indexed: false,
        confidential: false,
    },
];

pub const OBJECT_CLASSES: &[ObjectClass] = &[
    ObjectClass {
        name: "parleyUser",
        ad_cn: "Parley-User",
        number: 1,
        description: "A person who signs in to Parley",
        kind: Kind::Auxiliary,
        must: &[attrs::SIP_ADDRESS],
        may: &[attrs::ENABLED, attrs::HOME_SERVER, attrs::HA1_MD5, attrs::HA1_SHA256],
        ad_superiors: &[],
    },
    ObjectClass {
        name: "parleyServices",
        ad_cn: "Parley-Services",
        number: 2,
        description: "Global settings container of Parley",
        kind: Kind::Structural,
        must: &["cn"],
        may: &[attrs::SIP_DOMAIN, "description"],
        ad_superiors: &["container", "organizationalUnit", "domainDNS"],
    },
    ObjectClass {
        name: "parleyServer",
        ad_cn: "Parley-Server",
        number: 3,
        description: "A Parley Home Server or Front-End registered in the settings container",
        kind: Kind::Structural,
        must: &["cn"],
        may: &[attrs::SERVER_ADDRESS, attrs::CAPACITY, attrs::SERVER_API, "description"],
        ad_superiors: &["parleyServices"],
    },
    ObjectClass {
        name: "parleyDomain",
        ad_cn: "Parley-Domain",
        number: 4,
        description: "A directory domain whose users may use this Parley deployment",
        kind: Kind::Structural,
        must: &["cn", attrs::SIP_DOMAIN, attrs::USER_BASE_DN],
        may: &["description"],
        ad_superiors: &["parleyServices"],
    },
];

impl AttributeType {
    pub fn oid(&self) -> String {
        format!("{ARC}.1.{}", self.number)
    }

    /// RFC 4512 AttributeTypeDescription, as OpenLDAP's `olcAttributeTypes` takes it.
    pub fn openldap(&self) -> String {
        let single = if self.single_valued { " SINGLE-VALUE" } else { "" };
        format!(
            "( {} NAME '{}' DESC '{}' {}{single} )",
            self.oid(),
            self.name,
            self.description,
            self.syntax.openldap()
        )
    }
}

impl ObjectClass {
    pub fn oid(&self) -> String {
        format!("{ARC}.2.{}", self.number)
    }

    /// RFC 4512 ObjectClassDescription, as OpenLDAP's `olcObjectClasses` takes it.
    pub fn openldap(&self) -> String {
        let kind = match self.kind {
            Kind::Structural => "STRUCTURAL",
            Kind::Auxiliary => "AUXILIARY",
        };
        let list = |names: &[&str]| match names {
            [one] => one.to_string(),
            many => format!("( {} )", many.join(" $ ")),
        };
        let mut s = format!("( {} NAME '{}' DESC '{}' SUP top {kind}", self.oid(), self.name, self.description);
        if !self.must.is_empty() {
            s += &format!(" MUST {}", list(self.must));
        }
        if !self.may.is_empty() {
            s += &format!(" MAY {}", list(self.may));
        }
        s + " )"
    }
}

/// Name of a schema element in an RFC 4512 description (`( oid NAME 'x' ...`), lower-case.
pub fn description_name(desc: &str) -> Option<String> {
    let rest = desc.split_once("NAME")?.1.trim_start();
    let rest = rest.strip_prefix('(').unwrap_or(rest).trim_start();
    let name = rest.strip_prefix('\'')?.split('\'').next()?;
    Some(name.to_ascii_lowercase())
}

/// Strips OpenLDAP's `{n}` ordering prefix from a cn=config value.
pub fn strip_index(value: &str) -> &str {
    match value.strip_prefix('{').and_then(|r| r.split_once('}')) {
        Some((n, rest)) if n.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => value,
    }
}

/// Whitespace-normalised form, for comparing definitions.
pub fn normalise(desc: &str) -> String {
    desc.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// LDIF that creates the schema in OpenLDAP's `cn=config` (for `ldapadd -Y EXTERNAL`), the same
/// content `prep schema` applies over LDAP.
pub fn openldap_ldif() -> String {
    let mut out = String::from("dn: cn=parley,cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: parley\n");
    for a in ATTRIBUTE_TYPES {
        out += &format!("olcAttributeTypes: {}\n", a.openldap());
    }
    for c in OBJECT_CLASSES {
        out += &format!("olcObjectClasses: {}\n", c.openldap());
    }
    out
}

/// Active Directory LDIF for `ldifde -i -f parley-schema.ldif -c "DC=X" "<forest root DN>"`, run
/// by a Schema Admin: attributeSchema objects, a schema cache refresh, classSchema objects, a
/// refresh, and `parleyUser` attached to the `user` class as an auxiliary class.
pub fn ad_ldif() -> String {
    const SCHEMA: &str = "CN=Schema,CN=Configuration,DC=X";
    let refresh = "dn:\nchangetype: modify\nadd: schemaUpdateNow\nschemaUpdateNow: 1\n-\n\n";
    let mut out = String::from(
        "# Parley directory schema for Active Directory (generated by `parley-server prep schema --dialect ad`).\n\
         # Import as a Schema Admin: ldifde -i -f parley-schema.ldif -c \"DC=X\" \"DC=corp,DC=example,DC=com\"\n\n",
    );
    for a in ATTRIBUTE_TYPES {
        let (syntax, om, om_class) = a.syntax.ad();
        out += &format!("dn: CN={},{SCHEMA}\nchangetype: ntdsSchemaAdd\n", a.ad_cn);
        out += "objectClass: top\nobjectClass: attributeSchema\n";
        out += &format!("cn: {}\nattributeID: {}\nlDAPDisplayName: {}\n", a.ad_cn, a.oid(), a.name);
        out += &format!("adminDisplayName: {}\nadminDescription: {}\n", a.ad_cn, a.description);
        out += &format!("attributeSyntax: {syntax}\noMSyntax: {om}\n");
        if let Some(c) = om_class {
            out += &format!("oMObjectClass:: {c}\n");
        }
        out += &format!("isSingleValued: {}\n", if a.single_valued { "TRUE" } else { "FALSE" });
        out += &format!("searchFlags: {}\n\n", u8::from(a.indexed) | if a.confidential { 128 } else { 0 });
    }
    out += refresh;
    for c in OBJECT_CLASSES {
        out += &format!("dn: CN={},{SCHEMA}\nchangetype: ntdsSchemaAdd\n", c.ad_cn);
        out += "objectClass: top\nobjectClass: classSchema\n";
        out += &format!("cn: {}\ngovernsID: {}\nlDAPDisplayName: {}\n", c.ad_cn, c.oid(), c.name);
        out += &format!("adminDisplayName: {}\nadminDescription: {}\n", c.ad_cn, c.description);
        let category = match c.kind {
            Kind::Structural => 1,
            Kind::Auxiliary => 3,
        };
        out += &format!("objectClassCategory: {category}\nsubClassOf: top\n");
        // `cn` is every AD object's naming attribute; AD lists it nowhere.
        for m in c.must.iter().filter(|m| **m != "cn") {
            out += &format!("mustContain: {m}\n");
        }
        for m in c.may.iter().filter(|m| **m != "cn") {
            out += &format!("mayContain: {m}\n");
        }
        for s in c.ad_superiors {
            out += &format!("possSuperiors: {s}\n");
        }
        if c.kind == Kind::Structural {
            out += &format!("defaultObjectCategory: CN={},{SCHEMA}\n", c.ad_cn);
        }
        out += "\n";
    }
    out += refresh;
    out += &format!(
        "dn: CN=User,{SCHEMA}\nchangetype: ntdsSchemaModify\nadd: auxiliaryClass\nauxiliaryClass: parleyUser\n-\n\n"
    );
    out += refresh;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn definitions_are_consistent() {
        let names: HashSet<_> = ATTRIBUTE_TYPES.iter().map(|a| a.name).collect();
        assert_eq!(names.len(), ATTRIBUTE_TYPES.len(), "attribute names are unique");
        let numbers: HashSet<_> = ATTRIBUTE_TYPES.iter().map(|a| a.number).collect();
        assert_eq!(numbers.len(), ATTRIBUTE_TYPES.len(), "attribute OIDs are unique");
        let numbers: HashSet<_> = OBJECT_CLASSES.iter().map(|c| c.number).collect();
        assert_eq!(numbers.len(), OBJECT_CLASSES.len(), "class OIDs are unique");
        for d in ATTRIBUTE_TYPES.iter().map(|a| a.description).chain(OBJECT_CLASSES.iter().map(|c| c.description)) {
            assert!(!d.contains(['\'', '\\']), "descriptions are qdstrings: {d}");
        }
        for c in OBJECT_CLASSES {
            for a in c.must.iter().chain(c.may) {
                assert!(names.contains(a) || ["cn", "description"].contains(a), "{} uses unknown {a}", c.name);
            }
        }
    }

    #[test]
    fn renders_openldap_descriptions() {
        let a = &ATTRIBUTE_TYPES[0];
        assert_eq!(
            a.openldap(),
            "( 1.3.6.1.4.1.61626.1.1.1 NAME 'parleySipAddress' DESC 'SIP address of record without scheme \
             (user@domain)' EQUALITY caseIgnoreIA5Match SUBSTR caseIgnoreIA5SubstringsMatch \
             SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 SINGLE-VALUE )"
        );
        assert_eq!(description_name(&a.openldap()).as_deref(), Some("parleysipaddress"));
        assert!(OBJECT_CLASSES[0].openldap().contains("AUXILIARY MUST parleySipAddress MAY ( parleyEnabled $"));
        assert_eq!(strip_index("{12}( 1.2 NAME 'x' )"), "( 1.2 NAME 'x' )");
        assert_eq!(strip_index("( 1.2 )"), "( 1.2 )");
    }
}
