//! The broker's TLS (`serve --tls-cert --tls-key`): rustls with the ring
//! provider, from PEM files. Every way the files can be wrong is an error
//! that names the file and says what to give instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// The certificate and private key the broker answers TLS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the broker's certificate, then any intermediate ones.
    pub cert: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The server configuration these files make.
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let cert_flag = format!("--tls-cert {}", self.cert.display());
        let key_flag = format!("--tls-key {}", self.key.display());
        let certs = CertificateDer::pem_slice_iter(&read(&self.cert, &cert_flag)?)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{cert_flag}: not a PEM file"))?;
        if certs.is_empty() {
            anyhow::bail!(
                "{cert_flag}: holds no certificate (a -----BEGIN CERTIFICATE----- block); give the PEM file of the broker's certificate, followed by any intermediate ones"
            );
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key, &key_flag)?).map_err(|e| {
            anyhow::anyhow!(
                "{key_flag}: holds no private key ({e}); give the PEM file of the certificate's key (a -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY block)"
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("the TLS provider offers no protocol version")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
                    "{key_flag}: this private key does not belong to the certificate in {}; give the key the certificate was made for",
                    self.cert.display()
                ),
                e => anyhow::anyhow!("{cert_flag} with {key_flag}: cannot serve TLS with them: {e}"),
            })
    }
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!("{flag}: cannot read the file; give a PEM file the broker may read")
    })
}
