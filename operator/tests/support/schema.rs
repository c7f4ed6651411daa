//! What a real API server does with a custom resource against its CRD's schema: prune unknown
//! fields, apply defaults, check types, enums, ranges, lengths, patterns and required fields, and
//! evaluate the `x-kubernetes-validations` CEL rules (with `oldSelf` on updates) using kube's
//! client-side CEL engine.

use serde_json::{Map, Value};

/// Prunes fields the schema does not know (structural pruning), recursively.
pub fn prune(schema: &Value, v: &mut Value, root: bool) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = schema.get("properties") {
                m.retain(|k, _| {
                    props.contains_key(k) || (root && ["apiVersion", "kind", "metadata"].contains(&k.as_str()))
                });
                for (k, c) in m.iter_mut() {
                    if let Some(s) = props.get(k) {
                        prune(s, c, false);
                    }
                }
            } else if let Some(s @ Value::Object(_)) = schema.get("additionalProperties") {
                for c in m.values_mut() {
                    prune(s, c, false);
                }
            }
        }
        Value::Array(a) => {
            if let Some(s) = schema.get("items") {
                for c in a {
                    prune(s, c, false);
                }
            }
        }
        _ => {}
    }
}

fn check(schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let s = match schema.as_object() {
        Some(s) => s,
        None => return,
    };
    if v.is_null() {
        if s.get("nullable") != Some(&Value::Bool(true)) {
            errs.push(format!("{path}: Invalid value: null"));
        }
        return;
    }
    let int_or_string = s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let type_ok = match s.get("type").and_then(Value::as_str) {
        _ if int_or_string => v.is_string() || v.is_i64() || v.is_u64(),
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errs.push(format!(
            "{path}: Invalid value: {v}: must be of type {}",
            s.get("type").and_then(Value::as_str).unwrap_or("?")
        ));
        return;
    }
    if let Some(Value::Array(allowed)) = s.get("enum")
        && !allowed.contains(v)
    {
        errs.push(format!("{path}: Unsupported value: {v}"));
    }
    if let Some(n) = v.as_f64() {
        if s.get("minimum").and_then(Value::as_f64).is_some_and(|m| n < m) {
            errs.push(format!("{path}: Invalid value: {v}: should be greater than or equal to {}", s["minimum"]));
        }
        if s.get("maximum").and_then(Value::as_f64).is_some_and(|m| n > m) {
            errs.push(format!("{path}: Invalid value: {v}: should be less than or equal to {}", s["maximum"]));
        }
    }
    if let Some(text) = v.as_str() {
        let len = text.chars().count() as u64;
        if s.get("minLength").and_then(Value::as_u64).is_some_and(|m| len < m) {
            errs.push(format!("{path}: Invalid value: {v}: should be at least {} chars long", s["minLength"]));
        }
        if s.get("maxLength").and_then(Value::as_u64).is_some_and(|m| len > m) {
            errs.push(format!("{path}: Too long: may not be more than {} chars", s["maxLength"]));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str)
            && !int_or_string
        {
            match regex::Regex::new(p) {
                Ok(re) if re.is_match(text) => {}
                Ok(_) => errs.push(format!("{path}: Invalid value: {v}: should match '{p}'")),
                Err(e) => errs.push(format!("{path}: bad pattern in schema: {e}")),
            }
        }
    }
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(req)) = s.get("required") {
                for r in req.iter().filter_map(Value::as_str) {
                    if !m.contains_key(r) {
                        errs.push(format!("{path}.{r}: Required value"));
                    }
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, c) in m {
                let child =
                    props.and_then(|p| p.get(k)).or_else(|| s.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(cs) = child {
                    check(cs, c, &format!("{path}.{k}"), errs);
                }
            }
        }
        Value::Array(a) => {
            if s.get("maxItems").and_then(Value::as_u64).is_some_and(|m| a.len() as u64 > m) {
                errs.push(format!("{path}: Too many: {}: must have at most {} items", a.len(), s["maxItems"]));
            }
            if let Some(is) = s.get("items") {
                for (i, c) in a.iter().enumerate() {
                    check(is, c, &format!("{path}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

/// Prunes, defaults and validates `obj` (a custom resource) in place against `schema`; returns the
/// errors the API server would put in its 422 response.
pub fn admit(schema: &Value, obj: &mut Value, old: Option<&Value>) -> Vec<String> {
    prune(schema, obj, true);
    *obj = kube::core::cel::apply_defaults(schema, obj);
    let mut errs = Vec::new();
    let mut without_meta = obj.clone();
    if let Some(m) = without_meta.as_object_mut() {
        m.remove("metadata");
    }
    let mut body_schema = schema.clone();
    if let Some(Value::Array(req)) = body_schema.get_mut("required") {
        req.retain(|r| r != "metadata");
    }
    check(&body_schema, &without_meta, "", &mut errs);
    let for_cel = cel_view(obj);
    if let Err(e) = kube::core::cel::Validator::new().validate(schema, &for_cel, old.map(cel_view).as_ref()) {
        for e in e.into_vec() {
            let field = if e.field_path.is_empty() { String::new() } else { format!("{}: ", e.field_path) };
            errs.push(format!("{field}{}", e.message));
        }
    }
    errs
}

/// CEL rules see `metadata.name` and `metadata.generateName` only.
fn cel_view(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        let kept: Map<String, Value> = m
            .iter()
            .filter(|(k, _)| *k == "name" || *k == "generateName")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        *m = kept;
    }
    v
}
