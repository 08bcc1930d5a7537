//! JSON Web Tokens: HS256 with a shared secret, RS256/ES256 (and their
//! family) with a public key file or a JWKS file.
//!
//! `exp` is required, `nbf` is checked when present, `aud` and `iss` must
//! match `--jwt-audience` and `--jwt-issuer`. The namespace is the string
//! claim `--jwt-namespace-claim` (default `namespace`); the roles are the
//! claim `--jwt-roles-claim` (default `roles`): an array of role names or
//! one string of names separated by spaces or commas. Names other than
//! client, worker and operator are ignored.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind};
use serde_json::{Map, Value};

use super::{Error, Identity, Method, Role, Roles, valid_namespace};
use crate::config::AuthConfig;

struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys and claims.
pub struct JwtVerifier {
    keys: Vec<Key>,
    audience: String,
    issuer: String,
    leeway: Duration,
    namespace_claim: String,
    roles_claim: String,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The algorithms a key of this family verifies.
fn algorithms(family: jsonwebtoken::AlgorithmFamily) -> &'static [Algorithm] {
    use jsonwebtoken::AlgorithmFamily::*;
    match family {
        Hmac => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        Rsa => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        Ec => &[Algorithm::ES256, Algorithm::ES384],
        Ed => &[Algorithm::EdDSA],
    }
}

/// A short reason for a refused token, safe to send to the caller.
fn reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "the token is for another audience".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match the key".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("the token has no {c:?} claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("the token's {c:?} claim is malformed"),
        _ => "the token is malformed".into(),
    }
}

impl JwtVerifier {
    pub fn from_config(config: &AuthConfig) -> Result<JwtVerifier, Error> {
        let mut keys = Vec::new();
        if let Some(path) = &config.jwt_hs256_secret_file {
            let secret = read("the JWT secret file", path)?;
            let secret = secret.trim_ascii();
            if secret.len() < 32 {
                return Err(Error::Config(format!(
                    "{}: an HS256 secret must be at least 32 bytes",
                    path.display()
                )));
            }
            keys.push(Key {
                kid: None,
                key: DecodingKey::from_secret(secret).map_err(|e| {
                    Error::Config(format!("{}: not an HMAC secret: {e}", path.display()))
                })?,
            });
        }
        if let Some(path) = &config.jwt_public_key_file {
            let pem = read("the JWT public key file", path)?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem))
                .map_err(|_| {
                    Error::Config(format!(
                        "{}: not a PEM RSA, EC or Ed25519 public key",
                        path.display()
                    ))
                })?;
            keys.push(Key { kid: None, key });
        }
        if let Some(path) = &config.jwt_jwks_file {
            let text = read("the JWKS file", path)?;
            let set: JwkSet = serde_json::from_slice(&text)
                .map_err(|e| Error::Config(format!("{}: not a JWKS: {e}", path.display())))?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| Error::Config(format!("{}: unusable key: {e}", path.display())))?;
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    key,
                });
            }
        }
        if keys.is_empty() {
            return Err(Error::Config(
                "--auth jwt needs --jwt-hs256-secret-file, --jwt-public-key-file or --jwt-jwks-file"
                    .into(),
            ));
        }
        let (Some(audience), Some(issuer)) = (&config.jwt_audience, &config.jwt_issuer) else {
            return Err(Error::Config(
                "--auth jwt needs --jwt-audience and --jwt-issuer".into(),
            ));
        };
        Ok(JwtVerifier {
            keys,
            audience: audience.clone(),
            issuer: issuer.clone(),
            leeway: config.jwt_leeway,
            namespace_claim: config.jwt_namespace_claim.clone(),
            roles_claim: config.jwt_roles_claim.clone(),
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_audience(&[&self.audience]);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "aud", "iss"]);
        v
    }

    /// The identity a token names, if it verifies.
    pub fn verify(&self, token: &str) -> Result<Identity, Error> {
        let header = decode_header(token).map_err(|e| Error::Invalid(reason(e.kind())))?;
        let family = header.alg.family();
        let mut last = Error::Invalid("no configured key verifies this token's algorithm".into());
        let candidates = self.keys.iter().filter(|k| {
            k.key.family() == family
                && algorithms(family).contains(&header.alg)
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        for key in candidates {
            match decode::<Map<String, Value>>(token, &key.key, &self.validation(header.alg)) {
                Ok(data) => return self.identity(&data.claims),
                Err(e) => {
                    last = Error::Invalid(reason(e.kind()));
                    // Only a signature that does not verify is worth
                    // trying the next key for.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, Error> {
        let namespace = claims
            .get(&self.namespace_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the token has no string {:?} claim",
                    self.namespace_claim
                ))
            })?;
        valid_namespace(namespace).map_err(Error::Invalid)?;
        let names: Vec<&str> = match claims.get(&self.roles_claim) {
            Some(Value::String(s)) => s.split([' ', ',']).collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let roles: Roles = names.into_iter().filter_map(Role::parse).collect();
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("jwt")
            .chars()
            .take(128)
            .collect();
        Ok(Identity {
            subject,
            namespace: namespace.to_owned(),
            roles,
            method: Method::Jwt,
        })
    }
}
