//! Credentials the operator generates once per domain and then keeps, since the servers read them
//! at start: the operations API's administrator token (Home Servers, `user move`, drain Jobs) and
//! the key the Front-End replicas mint flow tokens under (so that, when one replica goes away,
//! another reaches its UDP clients).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::Owner;
use super::prep::labels;

/// Name of the Secret holding the domain's administrator token (key `token`).
pub fn api_token_secret_name(domain: &str) -> String {
    format!("{domain}-api-token")
}

/// Name of the Secret holding the Front-End replicas' flow-token key (key `key`).
pub fn flow_key_secret_name(domain: &str) -> String {
    format!("{domain}-flow-key")
}

/// The domain `owner`'s administrator token Secret, holding `token`.
pub fn api_token_secret(owner: &Owner, token: &str) -> Secret {
    secret(owner, api_token_secret_name(&owner.name), "api-token", "token", token)
}

/// The domain `owner`'s flow-token key Secret, holding `key`.
pub fn flow_key_secret(owner: &Owner, key: &str) -> Secret {
    secret(owner, flow_key_secret_name(&owner.name), "flow-key", "key", key)
}

fn secret(owner: &Owner, name: String, component: &str, key: &str, value: &str) -> Secret {
    let labels = labels(&name, &owner.name, component);
    Secret {
        metadata: owner.meta(name, labels),
        type_: Some("Opaque".into()),
        // `data`, not `stringData`: the API server stores only `data`, so a re-apply compares equal.
        data: Some(BTreeMap::from([(key.to_string(), ByteString(value.as_bytes().to_vec()))])),
        ..Default::default()
    }
}
