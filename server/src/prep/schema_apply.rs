//! `prep schema` against OpenLDAP (`cn=parley,cn=schema,cn=config`) and its check against any
//! directory's subschema subentry.

use super::explain;
use super::schema::{ATTRIBUTE_TYPES, OBJECT_CLASSES, description_name, normalise, strip_index};
use crate::directory::ldap_client::{LdapPool, attr, first};
use ldap3::{Mod, Scope};
use std::collections::{HashMap, HashSet};

const SCHEMA_CONFIG: &str = "cn=schema,cn=config";
const TYPES: &str = "olcAttributeTypes";
const CLASSES: &str = "olcObjectClasses";

/// Adds what is missing; replaces object classes whose definition changed (e.g. a newer Parley
/// allows more attributes). Returns one line per change.
pub async fn apply(pool: &LdapPool) -> anyhow::Result<Vec<String>> {
    let what = "reading cn=schema,cn=config (needs manage access to cn=config)";
    if pool.get(SCHEMA_CONFIG, &["1.1"]).await.map_err(|e| explain(pool, what, e))?.is_none() {
        anyhow::bail!("{what}: not visible to {}", pool.bind_dn());
    }
    let existing = pool
        .search(SCHEMA_CONFIG, Scope::OneLevel, "(cn=*parley)", &["cn", TYPES, CLASSES])
        .await
        .map_err(|e| explain(pool, what, e))?;
    let mut changes = Vec::new();
    let dn = match existing.into_iter().find(|e| first(e, "cn").is_some_and(|cn| strip_index(cn) == "parley")) {
        Some(entry) => {
            let mods = plan(attr(&entry, TYPES), attr(&entry, CLASSES), &mut changes);
            if !mods.is_empty() {
                pool.modify(&entry.dn, mods).await.map_err(|e| explain(pool, "updating the schema", e))?;
            }
            return Ok(changes);
        }
        None => {
            let dn = format!("cn=parley,{SCHEMA_CONFIG}");
            let attrs = vec![
                ("objectClass".to_string(), vec!["olcSchemaConfig".to_string()]),
                ("cn".to_string(), vec!["parley".to_string()]),
            ];
            pool.add(&dn, attrs).await.map_err(|e| explain(pool, "creating the schema entry", e))?;
            changes.push(format!("created schema entry {dn}"));
            // The new entry is named cn={n}parley; find it.
            let created = pool
                .search(SCHEMA_CONFIG, Scope::OneLevel, "(cn=*parley)", &["cn"])
                .await
                .map_err(|e| explain(pool, what, e))?;
            created
                .into_iter()
                .find(|e| first(e, "cn").is_some_and(|cn| strip_index(cn) == "parley"))
                .map(|e| e.dn)
                .unwrap_or(dn)
        }
    };
    let mods = plan(&[], &[], &mut changes);
    pool.modify(&dn, mods).await.map_err(|e| explain(pool, "adding the schema definitions", e))?;
    Ok(changes)
}

/// The modifications that turn the existing values into Parley's definitions, in order
/// (attribute types before the classes that use them; one value per modification so that
/// OpenLDAP numbers them in definition order).
fn plan(types: &[String], classes: &[String], changes: &mut Vec<String>) -> Vec<Mod<String>> {
    let by_name = |values: &[String]| -> HashMap<String, String> {
        values.iter().filter_map(|v| Some((description_name(strip_index(v))?, v.clone()))).collect()
    };
    let (types, classes) = (by_name(types), by_name(classes));
    let mut mods = Vec::new();
    for a in ATTRIBUTE_TYPES {
        let want = a.openldap();
        match types.get(&a.name.to_ascii_lowercase()) {
            None => {
                mods.push(Mod::Add(TYPES.to_string(), HashSet::from([want])));
                changes.push(format!("added attribute type {} ({})", a.name, a.oid()));
            }
            Some(have) if normalise(strip_index(have)) != normalise(&want) => {
                // Attribute types in use cannot be redefined in place; say so rather than guess.
                changes.push(format!("attribute type {} differs from this version's; left as it is", a.name));
            }
            Some(_) => {}
        }
    }
    for c in OBJECT_CLASSES {
        let want = c.openldap();
        match classes.get(&c.name.to_ascii_lowercase()) {
            None => {
                mods.push(Mod::Add(CLASSES.to_string(), HashSet::from([want])));
                changes.push(format!("added object class {} ({})", c.name, c.oid()));
            }
            Some(have) if normalise(strip_index(have)) != normalise(&want) => {
                mods.push(Mod::Delete(CLASSES.to_string(), HashSet::from([have.clone()])));
                mods.push(Mod::Add(CLASSES.to_string(), HashSet::from([want])));
                changes.push(format!("updated object class {}", c.name));
            }
            Some(_) => {}
        }
    }
    mods
}

/// What the directory's subschema lacks: missing attribute types and object classes, and object
/// classes that allow fewer attributes than this version needs. Empty when prepared.
pub async fn check(pool: &LdapPool) -> anyhow::Result<Vec<String>> {
    let root = pool
        .get("", &["subschemaSubentry"])
        .await
        .map_err(|e| explain(pool, "reading the root DSE", e))?
        .ok_or_else(|| anyhow::anyhow!("the root DSE is not readable"))?;
    let subschema = first(&root, "subschemaSubentry").unwrap_or("cn=Subschema").to_string();
    let entry = pool
        .get(&subschema, &["attributeTypes", "objectClasses"])
        .await
        .map_err(|e| explain(pool, "reading the subschema", e))?
        .ok_or_else(|| anyhow::anyhow!("the subschema entry {subschema} is not readable"))?;
    let index = |name: &str| -> HashMap<String, String> {
        attr(&entry, name).iter().filter_map(|v| Some((description_name(v)?, v.clone()))).collect()
    };
    let (types, classes) = (index("attributeTypes"), index("objectClasses"));
    let mut missing = Vec::new();
    let absent: Vec<&str> =
        ATTRIBUTE_TYPES.iter().filter(|a| !types.contains_key(&a.name.to_ascii_lowercase())).map(|a| a.name).collect();
    if !absent.is_empty() {
        missing.push(format!("attribute types {}", absent.join(", ")));
    }
    let mut absent = Vec::new();
    for c in OBJECT_CLASSES {
        match classes.get(&c.name.to_ascii_lowercase()) {
            None => absent.push(c.name.to_string()),
            Some(have) => {
                let allowed: HashSet<String> =
                    ["MUST", "MAY"].iter().flat_map(|k| list_after(have, k)).map(|n| n.to_ascii_lowercase()).collect();
                let lacking: Vec<&str> = c
                    .must
                    .iter()
                    .chain(c.may)
                    .filter(|n| !allowed.contains(&n.to_ascii_lowercase()))
                    .copied()
                    .collect();
                if !lacking.is_empty() {
                    absent.push(format!("{} (outdated: lacks {})", c.name, lacking.join(", ")));
                }
            }
        }
    }
    if !absent.is_empty() {
        missing.push(format!("object classes {}", absent.join(", ")));
    }
    Ok(missing)
}

/// The attribute names after `MUST` or `MAY` in an object class description.
fn list_after(desc: &str, keyword: &str) -> Vec<String> {
    let Some((_, rest)) = desc.split_once(&format!(" {keyword} ")) else { return Vec::new() };
    let rest = rest.trim_start();
    let list = match rest.strip_prefix('(') {
        Some(r) => r.split(')').next().unwrap_or(""),
        None => rest.split_whitespace().next().unwrap_or(""),
    };
    list.split('$').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_only_what_is_missing_or_changed() {
        let mut changes = Vec::new();
        assert_eq!(plan(&[], &[], &mut changes).len(), ATTRIBUTE_TYPES.len() + OBJECT_CLASSES.len());
        let types: Vec<String> =
            ATTRIBUTE_TYPES.iter().enumerate().map(|(i, a)| format!("{{{i}}}{}", a.openldap())).collect();
        let mut classes: Vec<String> = OBJECT_CLASSES.iter().map(|c| c.openldap()).collect();
        let mut changes = Vec::new();
        assert!(plan(&types, &classes, &mut changes).is_empty() && changes.is_empty());
        // An older parleyUser without parleyHA1SHA256 is replaced; a missing class is added.
        classes[0] = classes[0].replace(" $ parleyHA1SHA256", "");
        classes.pop();
        let mods = plan(&types[..types.len() - 1], &classes, &mut changes);
        assert_eq!(mods.len(), 4, "{changes:?}");
        assert!(changes.iter().any(|c| c == "updated object class parleyUser"), "{changes:?}");
    }

    #[test]
    fn reads_must_and_may_lists() {
        let d = "( 1.2 NAME 'x' SUP top AUXILIARY MUST a MAY ( b $ c ) )";
        assert_eq!(list_after(d, "MUST"), ["a"]);
        assert_eq!(list_after(d, "MAY"), ["b", "c"]);
    }
}
