//! Field paths of JSON objects, as server-side apply tracks them.
//!
//! A path leads to a leaf: a scalar, an empty object, or an atomic list. Lists of objects are
//! *associative* when their items carry a key (as Kubernetes declares with
//! `x-kubernetes-list-map-keys`): containers and volumes by `name`, ports by port and protocol,
//! conditions by `type`, owner references by `uid`. Their items are addressed by key, and each
//! item also has an `Item` marker path so that whoever applied an item owns its existence.
//! The double infers the keys from the items' shape instead of reading OpenAPI extensions;
//! that covers every list the operator writes.

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seg {
    /// A field of an object.
    F(String),
    /// An item of an associative list, by its key (`name=server`, `port=5060,protocol=UDP`).
    K(String),
    /// The existence of the list item the previous `K` names.
    Item,
}

pub type Path = Vec<Seg>;

/// Renders a path the way conflict messages show it: `.spec.template.spec.containers[name=server].image`.
pub fn show(p: &Path) -> String {
    p.iter()
        .map(|s| match s {
            Seg::F(f) => format!(".{f}"),
            Seg::K(k) => format!("[{k}]"),
            Seg::Item => String::new(),
        })
        .collect()
}

/// The key fields of a list, or `None` for an atomic list.
pub fn list_keys(items: &[Value]) -> Option<&'static [&'static str]> {
    if items.is_empty() || !items.iter().all(Value::is_object) {
        return None;
    }
    let all = |f: &str| items.iter().all(|i| i.get(f).is_some());
    Some(if all("containerPort") {
        &["containerPort", "protocol"]
    } else if all("port") && items.iter().all(|i| i["port"].is_number()) {
        &["port", "protocol"]
    } else if all("uid") && all("kind") {
        &["uid"]
    } else if all("type") && all("status") {
        &["type"]
    } else if all("name") {
        &["name"]
    } else if all("mountPath") {
        &["mountPath"]
    } else {
        return None;
    })
}

/// The key of a list item under `keys`.
pub fn item_key(item: &Value, keys: &[&str]) -> String {
    keys.iter()
        .map(|k| {
            let v = match item.get(*k) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None if *k == "protocol" => "TCP".into(),
                None => String::new(),
            };
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Every leaf path of `v`.
pub fn leaves(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    prefix.push(Seg::F(k.clone()));
                    walk(c, prefix, out);
                    prefix.pop();
                }
            }
            Value::Array(a) if list_keys(a).is_some() => {
                let keys = list_keys(a).unwrap_or_default();
                for item in a {
                    prefix.push(Seg::K(item_key(item, keys)));
                    let mut marker = prefix.clone();
                    marker.push(Seg::Item);
                    out.insert(marker);
                    walk(item, prefix, out);
                    prefix.pop();
                }
            }
            Value::Null => {}
            _ => {
                out.insert(prefix.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// A set of paths in the API server's `FieldsV1` form (what `metadata.managedFields` shows):
/// `f:<field>` for a field, `k:<key as JSON>` for an associative list's item, `.` for the item itself.
pub fn fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Value::Object(Default::default());
    for p in paths {
        let mut at = &mut root;
        for seg in p {
            let name = match seg {
                Seg::F(f) => format!("f:{f}"),
                Seg::K(k) => {
                    let key: serde_json::Map<String, Value> = k
                        .split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(f, v)| (f.to_string(), v.parse::<i64>().map(Value::from).unwrap_or_else(|_| v.into())))
                        .collect();
                    format!("k:{}", Value::Object(key))
                }
                Seg::Item => ".".into(),
            };
            at =
                at.as_object_mut().expect("field set").entry(name).or_insert_with(|| Value::Object(Default::default()));
        }
    }
    root
}

/// The value at `path`.
pub fn get<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else { return Some(v) };
    match first {
        Seg::F(f) => get(v.get(f)?, rest),
        Seg::K(k) => {
            let a = v.as_array()?;
            let keys = list_keys(a)?;
            get(a.iter().find(|i| &item_key(i, keys) == k)?, rest)
        }
        Seg::Item => Some(v),
    }
}

/// Removes the field (or, for an `Item` path, the list item) at `path`.
pub fn remove(v: &mut Value, path: &[Seg]) {
    match path {
        [] => {}
        [Seg::F(f)] => {
            if let Some(m) = v.as_object_mut() {
                m.remove(f);
            }
        }
        [Seg::K(k), Seg::Item] => {
            if let Some(a) = v.as_array_mut()
                && let Some(keys) = list_keys(a)
            {
                a.retain(|i| &item_key(i, keys) != k);
            }
        }
        [Seg::F(f), rest @ ..] => {
            if let Some(c) = v.get_mut(f) {
                remove(c, rest);
            }
        }
        [Seg::K(k), rest @ ..] => {
            if let Some(a) = v.as_array_mut()
                && let Some(keys) = list_keys(a)
                && let Some(i) = a.iter_mut().find(|i| &item_key(i, keys) == k)
            {
                remove(i, rest);
            }
        }
        [Seg::Item, ..] => {}
    }
}

/// Merges an applied configuration into `base`: objects field by field, associative lists item
/// by item (new items appended), anything else replaced.
pub fn merge(base: &mut Value, applied: &Value) {
    match (base, applied) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    continue;
                }
                match b.get_mut(k) {
                    Some(bv) => merge(bv, av),
                    None => {
                        b.insert(k.clone(), strip_nulls(av));
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(a)) if list_keys(a).is_some() && (b.is_empty() || list_keys(b).is_some()) => {
            let keys = list_keys(a).unwrap_or_default();
            for ai in a {
                let k = item_key(ai, keys);
                match b.iter_mut().find(|bi| item_key(bi, keys) == k) {
                    Some(bi) => merge(bi, ai),
                    None => b.push(strip_nulls(ai)),
                }
            }
        }
        (b, a) => *b = strip_nulls(a),
    }
}

/// `v` without null object fields (null means "not set" in an applied configuration).
pub fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), strip_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        v => v.clone(),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        p => *target = p.clone(),
    }
}
