//! Client certificates (mTLS): the TLS handshake has already checked the
//! chain against `--tls-client-ca`; here the verified leaf certificate
//! names the caller.
//!
//! The namespace is the subject's common name (`--mtls-namespace-from cn`,
//! the default) or the first DNS name of the subject alternative names
//! (`san`). The roles are the subject's organizational units (`OU=worker`)
//! that name roles; a certificate with none gets `--mtls-default-roles`
//! (default: no role at all).

use x509_parser::prelude::*;

use super::{Error, Identity, Method, Role, Roles, valid_namespace};
use crate::config::{AuthConfig, CertNamespaceFrom};

/// What a client certificate's identity is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertIdentity {
    CommonName,
    DnsName,
}

/// Turns verified client certificates into identities.
#[derive(Clone, Debug)]
pub struct CertificateAuth {
    from: CertIdentity,
    default_roles: Roles,
}

impl CertificateAuth {
    pub fn from_config(config: &AuthConfig) -> Result<CertificateAuth, Error> {
        Ok(CertificateAuth {
            from: match config.mtls_namespace_from {
                CertNamespaceFrom::Cn => CertIdentity::CommonName,
                CertNamespaceFrom::San => CertIdentity::DnsName,
            },
            default_roles: Roles::parse_list(&config.mtls_default_roles)
                .map_err(|e| Error::Config(format!("--mtls-default-roles: {e}")))?,
        })
    }

    /// The identity a verified leaf certificate (DER) names.
    pub fn identity(&self, der: &[u8]) -> Result<Identity, Error> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|_| Error::Invalid("the client certificate cannot be read".into()))?;
        let subject = cert.subject();
        let namespace = match self.from {
            CertIdentity::CommonName => subject
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            CertIdentity::DnsName => {
                cert.subject_alternative_name()
                    .ok()
                    .flatten()
                    .and_then(|san| {
                        san.value.general_names.iter().find_map(|n| match n {
                            GeneralName::DNSName(d) => Some((*d).to_owned()),
                            _ => None,
                        })
                    })
            }
        }
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the client certificate has no {}",
                match self.from {
                    CertIdentity::CommonName => "subject common name",
                    CertIdentity::DnsName => "DNS subject alternative name",
                }
            ))
        })?;
        valid_namespace(&namespace).map_err(Error::Invalid)?;
        let mut roles: Roles = subject
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .filter_map(Role::parse)
            .collect();
        if roles.is_empty() {
            roles = self.default_roles;
        }
        Ok(Identity {
            subject: subject.to_string().chars().take(256).collect(),
            namespace,
            roles,
            method: Method::ClientCertificate,
        })
    }
}
