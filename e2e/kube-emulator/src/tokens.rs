//! ServiceAccount tokens: the TokenRequest API mints ES256-signed JWTs with
//! the claims a real cluster puts in them, and TokenReview checks them —
//! signature, expiry, audience, and that the ServiceAccount (same uid)
//! still exists.

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
        UnparsedPublicKey,
    },
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::error::ApiError;

/// Issuer of minted tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The cluster's token signing key.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Signer {
    /// A fresh P-256 key.
    pub fn new() -> Result<Self, String> {
        let key =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|e| e.to_string())?;
        Ok(Self {
            key,
            rng: SystemRandom::new(),
        })
    }

    /// A token for ServiceAccount `namespace/name` (uid `uid`).
    pub fn mint(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        seconds: i64,
    ) -> Result<(String, i64), ApiError> {
        let now = unix_now();
        let exp = now + seconds.clamp(600, 48 * 3600);
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": "enclave-emulator"});
        let claims = json!({
            "aud": audiences,
            "exp": exp,
            "iat": now,
            "nbf": now,
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| ApiError::injected(500, None))?;
        Ok((
            format!(
                "{signing_input}.{}",
                URL_SAFE_NO_PAD.encode(signature.as_ref())
            ),
            exp,
        ))
    }

    /// The claims of `token` if its signature, validity window and (when
    /// given) audiences hold.
    pub fn verify(&self, token: &str, audiences: &[String]) -> Result<Value, String> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a JWT".into());
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| "bad signature encoding")?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(format!("{header}.{claims}").as_bytes(), &signature)
            .map_err(|_| "invalid signature")?;
        let claims: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(claims)
                .map_err(|_| "bad claims encoding")?,
        )
        .map_err(|_| "bad claims")?;
        let now = unix_now();
        if claims["exp"].as_i64().is_none_or(|exp| exp < now)
            || claims["nbf"].as_i64().is_some_and(|nbf| nbf > now)
        {
            return Err("token expired or not yet valid".into());
        }
        if !audiences.is_empty() {
            let has = claims["aud"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|a| audiences.iter().any(|w| w == a));
            if !has {
                return Err("token audiences do not match".into());
            }
        }
        Ok(claims)
    }
}
