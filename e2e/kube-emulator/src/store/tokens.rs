//! The TokenRequest and TokenReview APIs on the store.

use serde_json::{Value, json};

use super::{Store, meta_str};
use crate::error::ApiError;

/// The strings of a JSON array (none if it is not one).
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Store {
    /// TokenRequest: a token for ServiceAccount `ns/name`.
    pub fn token_request(&self, ns: &str, name: &str, request: &Value) -> Result<Value, ApiError> {
        let sa_res = self
            .resource("", "v1", "serviceaccounts")
            .ok_or_else(|| ApiError::not_found("resource", "serviceaccounts"))?;
        let sa = self.get(&sa_res, Some(ns), name)?;
        let uid = meta_str(&sa, "uid").unwrap_or_default();
        let mut audiences = strings(&request["spec"]["audiences"]);
        if audiences.is_empty() {
            audiences.push(crate::tokens::ISSUER.to_owned());
        }
        let seconds = request["spec"]["expirationSeconds"]
            .as_i64()
            .unwrap_or(3600);
        let (token, exp) = self.signer.mint(ns, name, uid, &audiences, seconds)?;
        let expiration = jiff::Timestamp::from_second(exp)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        let mut out = request.clone();
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["kind"] = json!("TokenRequest");
        out["status"] = json!({"token": token, "expirationTimestamp": expiration});
        Ok(out)
    }

    /// TokenReview: who `spec.token` is, if anyone.
    pub fn token_review(&self, request: &Value) -> Value {
        let token = request["spec"]["token"].as_str().unwrap_or_default();
        let audiences = strings(&request["spec"]["audiences"]);
        let status = match self.signer.verify(token, &audiences) {
            Ok(claims) => {
                let k = &claims["kubernetes.io"];
                let (ns, name, uid) = (
                    k["namespace"].as_str().unwrap_or_default(),
                    k["serviceaccount"]["name"].as_str().unwrap_or_default(),
                    k["serviceaccount"]["uid"].as_str().unwrap_or_default(),
                );
                // The ServiceAccount must still exist, with the same uid.
                let live = self
                    .resource("", "v1", "serviceaccounts")
                    .and_then(|r| self.get(&r, Some(ns), name).ok())
                    .is_some_and(|sa| meta_str(&sa, "uid") == Some(uid));
                if live {
                    json!({
                        "authenticated": true,
                        "user": {
                            "username": format!("system:serviceaccount:{ns}:{name}"),
                            "uid": uid,
                            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                        },
                        "audiences": if audiences.is_empty() { claims["aud"].clone() } else { json!(audiences) },
                    })
                } else {
                    json!({"authenticated": false, "error": "the service account no longer exists"})
                }
            }
            Err(error) => json!({"authenticated": false, "error": error}),
        };
        let mut out = request.clone();
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["kind"] = json!("TokenReview");
        out["status"] = status;
        out
    }
}
