//! Signing keys: private JWK files (ES256, RS256, EdDSA), generation, and the public JWKS.
//!
//! The crypto is the libraries': p256, rsa and ed25519-dalek read and generate keys and turn them
//! into DER; jsonwebtoken signs.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
use serde_json::{Value, json};

/// The algorithms Iris signs with.
pub const SIGNING_ALGS: [&str; 3] = ["ES256", "RS256", "EdDSA"];

/// One key Iris can sign with, and its public half.
pub struct SigningKey {
    /// `kid` in token headers and the JWKS.
    pub kid: String,
    /// The JWS algorithm.
    pub alg: Algorithm,
    /// For jsonwebtoken.
    pub encoding: EncodingKey,
    /// The public JWK as published.
    pub public_jwk: Value,
    /// Unique in this process: what per-thread signer caches key on (two keys may share a `kid`).
    pub instance: u64,
}

static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    File {
        /// The key file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The JWK is not a private key Iris can sign with.
    #[error("not a usable private JWK: {0}")]
    Jwk(String),
    /// `--alg` names an algorithm Iris does not sign with.
    #[error("unsupported algorithm {0}; use ES256, RS256 or EdDSA")]
    Alg(String),
}

fn jwk_error(reason: impl Into<String>) -> KeyError {
    KeyError::Jwk(reason.into())
}

/// Reads a key file holding one private JWK.
pub fn load_file(path: &Path) -> Result<SigningKey, KeyError> {
    let file_error = |reason: String| KeyError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    let jwk: Value =
        serde_json::from_str(&text).map_err(|e| file_error(format!("not JSON: {e}")))?;
    from_private_jwk(&jwk).map_err(|e| file_error(e.to_string()))
}

/// Builds a signing key from a private JWK; `kid` defaults to the RFC 7638 thumbprint.
pub fn from_private_jwk(jwk: &Value) -> Result<SigningKey, KeyError> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let kty = field("kty").ok_or_else(|| jwk_error("kty is missing"))?;
    let declared_alg = field("alg");
    let (alg, encoding, public) = match (kty, field("crv")) {
        ("EC", Some("P-256")) => {
            // p256 reads only the key members; `kid`, `alg` and `use` are ours to check.
            let members = json!({"kty": "EC", "crv": "P-256", "x": field("x"), "y": field("y"), "d": field("d")});
            let secret = p256::SecretKey::from_jwk_str(&members.to_string())
                .map_err(|_| jwk_error("EC key: x, y and d must form a P-256 key pair"))?;
            let der = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&secret)
                .map_err(|e| jwk_error(e.to_string()))?;
            let public: Value = serde_json::from_str(&secret.public_key().to_jwk_string())
                .map_err(|e| jwk_error(e.to_string()))?;
            (
                Algorithm::ES256,
                EncodingKey::from_ec_der(der.as_bytes()),
                public,
            )
        }
        ("OKP", Some("Ed25519")) => {
            let d = decode_fixed::<32>(field("d"), "d")?;
            let signing = ed25519_dalek::SigningKey::from_bytes(&d);
            let x = B64.encode(signing.verifying_key().as_bytes());
            if field("x").is_some_and(|given| given != x) {
                return Err(jwk_error("x does not belong to d"));
            }
            let der = signing
                .to_pkcs8_der()
                .map_err(|e| jwk_error(e.to_string()))?;
            let public = json!({"kty": "OKP", "crv": "Ed25519", "x": x});
            (
                Algorithm::EdDSA,
                EncodingKey::from_ed_der(der.as_bytes()),
                public,
            )
        }
        ("RSA", _) => {
            let big = |name: &str| -> Result<rsa::BigUint, KeyError> {
                let bytes = B64
                    .decode(field(name).ok_or_else(|| jwk_error(format!("{name} is missing")))?)
                    .map_err(|_| jwk_error(format!("{name} is not base64url")))?;
                Ok(rsa::BigUint::from_bytes_be(&bytes))
            };
            let key = rsa::RsaPrivateKey::from_components(
                big("n")?,
                big("e")?,
                big("d")?,
                vec![big("p")?, big("q")?],
            )
            .map_err(|e| jwk_error(format!("RSA key: {e}")))?;
            key.validate()
                .map_err(|e| jwk_error(format!("RSA key: {e}")))?;
            if key.size() < 256 {
                return Err(jwk_error("RSA keys must have at least 2048 bits"));
            }
            let der = key.to_pkcs1_der().map_err(|e| jwk_error(e.to_string()))?;
            let public = json!({"kty": "RSA", "n": B64.encode(key.n().to_bytes_be()), "e": B64.encode(key.e().to_bytes_be())});
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_der(der.as_bytes()),
                public,
            )
        }
        (kty, crv) => {
            return Err(jwk_error(format!(
                "kty {kty}{} is not supported; use EC P-256, RSA or OKP Ed25519",
                crv.map(|c| format!(" crv {c}")).unwrap_or_default()
            )));
        }
    };
    let alg_name = alg_name(alg);
    if declared_alg.is_some_and(|declared| declared != alg_name) {
        return Err(jwk_error(format!(
            "alg {} does not fit this key; it signs {alg_name}",
            declared_alg.unwrap_or_default()
        )));
    }
    let kid = match field("kid") {
        Some(kid) if !kid.is_empty() => kid.to_owned(),
        _ => thumbprint(&public)?,
    };
    let mut public_jwk = public;
    public_jwk["kid"] = json!(kid);
    public_jwk["use"] = json!("sig");
    public_jwk["alg"] = json!(alg_name);
    Ok(SigningKey {
        kid,
        alg,
        encoding,
        public_jwk,
        instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    })
}

fn decode_fixed<const N: usize>(value: Option<&str>, name: &str) -> Result<[u8; N], KeyError> {
    let bytes = B64
        .decode(value.ok_or_else(|| jwk_error(format!("{name} is missing")))?)
        .map_err(|_| jwk_error(format!("{name} is not base64url")))?;
    bytes
        .try_into()
        .map_err(|_| jwk_error(format!("{name} must be {N} bytes")))
}

/// The JWS name of an algorithm Iris signs with.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ES256",
        Algorithm::RS256 => "RS256",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

/// RFC 7638 SHA-256 thumbprint of a public JWK (RFC 8037 §2 for OKP keys).
pub fn thumbprint(public: &Value) -> Result<String, KeyError> {
    use sha2::Digest;
    let s = |name: &str| public.get(name).and_then(Value::as_str).unwrap_or_default();
    // The required members, in lexicographic order, without whitespace (RFC 7638 §3.2).
    let canonical = match s("kty") {
        "EC" => json!({"crv": s("crv"), "kty": "EC", "x": s("x"), "y": s("y")}),
        "RSA" => json!({"e": s("e"), "kty": "RSA", "n": s("n")}),
        "OKP" => json!({"crv": s("crv"), "kty": "OKP", "x": s("x")}),
        other => return Err(jwk_error(format!("cannot thumbprint kty {other}"))),
    };
    // Written in sorted order, so the output is canonical with or without serde_json's preserve_order.
    Ok(B64.encode(sha2::Sha256::digest(canonical.to_string().as_bytes())))
}

/// Generates a new private JWK for `iris keys generate`.
pub fn generate(alg: &str, kid: Option<&str>) -> Result<Value, KeyError> {
    let mut rng = rand_core::OsRng;
    let mut jwk = match alg {
        "ES256" => {
            let secret = p256::SecretKey::random(&mut rng);
            serde_json::from_str::<Value>(&secret.to_jwk_string())
                .map_err(|e| jwk_error(e.to_string()))?
        }
        "EdDSA" => {
            let signing = ed25519_dalek::SigningKey::generate(&mut rng);
            json!({
                "kty": "OKP", "crv": "Ed25519",
                "x": B64.encode(signing.verifying_key().as_bytes()),
                "d": B64.encode(signing.to_bytes()),
            })
        }
        "RS256" => {
            let key =
                rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| jwk_error(e.to_string()))?;
            let b = |n: &rsa::BigUint| B64.encode(n.to_bytes_be());
            let primes = key.primes();
            let (dp, dq) = (key.dp().map(b), key.dq().map(b));
            let qi = key.qinv().and_then(|q| q.to_biguint()).map(|q| b(&q));
            json!({
                "kty": "RSA", "n": b(key.n()), "e": b(key.e()), "d": b(key.d()),
                "p": b(&primes[0]), "q": b(&primes[1]), "dp": dp, "dq": dq, "qi": qi,
            })
        }
        other => return Err(KeyError::Alg(other.to_owned())),
    };
    let key = from_private_jwk(&jwk)?;
    jwk["kid"] = json!(kid.map(String::from).unwrap_or(key.kid));
    jwk["alg"] = json!(alg);
    jwk["use"] = json!("sig");
    Ok(jwk)
}

/// The configured keys (first signs) and the public JWKS built once from them.
pub struct KeySet {
    keys: Vec<SigningKey>,
    jwks: Value,
    /// True when no key was configured and one was generated for this process only.
    pub ephemeral: bool,
}

impl KeySet {
    /// Loads the configured key files; with none, generates an ephemeral ES256 key.
    pub fn load(paths: &[std::path::PathBuf]) -> Result<KeySet, KeyError> {
        let (keys, ephemeral) = if paths.is_empty() {
            (vec![from_private_jwk(&generate("ES256", None)?)?], true)
        } else {
            (
                paths
                    .iter()
                    .map(|p| load_file(p))
                    .collect::<Result<Vec<_>, _>>()?,
                false,
            )
        };
        let mut kids = std::collections::HashSet::new();
        if let Some(dup) = keys.iter().find(|k| !kids.insert(k.kid.as_str())) {
            return Err(jwk_error(format!("kid {} is used by two keys", dup.kid)));
        }
        let jwks = json!({"keys": keys.iter().map(|k| k.public_jwk.clone()).collect::<Vec<_>>()});
        Ok(KeySet {
            keys,
            jwks,
            ephemeral,
        })
    }

    /// The key that signs new tokens.
    pub fn signer(&self) -> &SigningKey {
        &self.keys[0]
    }

    /// Every configured key's public half: `{"keys": [...]}`.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The algorithms of the configured keys, for discovery.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut algs: Vec<&'static str> = Vec::new();
        for key in &self.keys {
            let name = alg_name(key.alg);
            if !algs.contains(&name) {
                algs.push(name);
            }
        }
        algs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_sign_and_verify() {
        for alg in SIGNING_ALGS {
            let private = generate(alg, Some("k1")).unwrap();
            assert_eq!(private["kid"], "k1");
            let key = from_private_jwk(&private).unwrap();
            assert_eq!(alg_name(key.alg), alg);
            assert!(
                key.public_jwk.get("d").is_none(),
                "the public JWK must not carry d"
            );
            let jwk: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(key.public_jwk.clone()).unwrap();
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(key.alg),
                &json!({"sub": "x", "exp": 4102444800u64}),
                &key.encoding,
            )
            .unwrap();
            let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
            let mut v = jsonwebtoken::Validation::new(key.alg);
            v.required_spec_claims.clear();
            jsonwebtoken::decode::<Value>(&token, &decoding, &v).unwrap();
        }
    }

    #[test]
    fn kid_defaults_to_the_rfc7638_thumbprint() {
        // RFC 7638 §3.1 example key.
        let public = json!({"kty": "RSA", "e": "AQAB", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"});
        assert_eq!(
            thumbprint(&public).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn mismatched_or_unsupported_keys_are_refused() {
        let mut private = generate("EdDSA", None).unwrap();
        private["x"] = json!(B64.encode([7u8; 32]));
        assert!(from_private_jwk(&private).is_err());
        assert!(from_private_jwk(&json!({"kty": "oct", "k": "c2VjcmV0"})).is_err());
        let mut es = generate("ES256", None).unwrap();
        es["alg"] = json!("RS256");
        assert!(from_private_jwk(&es).is_err());
        assert!(matches!(generate("HS256", None), Err(KeyError::Alg(_))));
    }
}
