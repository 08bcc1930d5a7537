//! Certificates made in the test: a CA, server certificates for
//! `localhost`/`127.0.0.1` and client certificates, written to a temporary
//! directory as PEM files for the servers' flags.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A PEM certificate and its key, in memory and on disk.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A throw-away certificate authority.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    /// The CA certificate.
    pub ca: CertFiles,
}

impl TestPki {
    /// A new CA (ECDSA P-256).
    pub fn new() -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("jobctl-pki-")
            .tempdir()
            .expect("temporary directory");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "jobctl test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let ca = write(dir.path(), "ca", ca_cert.pem(), ca_key.serialize_pem());
        TestPki {
            dir,
            ca_params,
            ca_key,
            ca,
        }
    }

    /// The directory the PEM files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self, name: &str) -> CertFiles {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(name, params)
    }

    /// A client certificate with subject `CN=<common_name>` and one
    /// `OU=<unit>` per unit.
    pub fn client(&self, name: &str, common_name: &str, units: &[&str]) -> CertFiles {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for unit in units {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, *unit);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(name, params)
    }

    fn issue(&self, name: &str, params: CertificateParams) -> CertFiles {
        let key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        write(self.dir.path(), name, cert.pem(), key.serialize_pem())
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

fn write(dir: &Path, name: &str, cert_pem: String, key_pem: String) -> CertFiles {
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, &cert_pem).expect("write certificate");
    std::fs::write(&key_path, &key_pem).expect("write key");
    CertFiles {
        cert_pem,
        key_pem,
        cert_path,
        key_path,
    }
}
