//! A certificate authority made per test (rcgen), for brokers that serve
//! TLS and the clients that must trust them through a private CA.

use std::path::{Path, PathBuf};

use super::BrokerProcess;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority made for one test, its PEM certificate written
/// to `ca`.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pub ca: PathBuf,
}

impl Authority {
    pub fn new(dir: &Path, name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem()).expect("CA written");
        Authority {
            issuer: Issuer::new(params, key),
            ca,
        }
    }

    /// A server certificate for 127.0.0.1 and localhost signed by this
    /// authority: the paths of its PEM certificate and key.
    pub fn server_certificate(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "renderfarm broker");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        let cert_path = dir.join(format!("{name}-cert.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("certificate written");
        std::fs::write(&key_path, key.serialize_pem()).expect("key written");
        (cert_path, key_path)
    }
}

/// A broker serving TLS with a certificate of `authority`, through the real
/// `renderfarm serve --tls-cert --tls-key`.
pub fn tls_broker(dir: &Path, authority: &Authority) -> BrokerProcess {
    let (cert, key) = authority.server_certificate(dir, "broker");
    let data = dir.join("data");
    let cert = cert.display().to_string();
    let key = key.display().to_string();
    BrokerProcess::start_with(
        &data,
        "127.0.0.1:0",
        &["--tls-cert", &cert, "--tls-key", &key],
    )
}
