//! TLS to an `https://` broker: rustls with the ring provider (no OpenSSL,
//! nothing that needs cmake to build), the system's certificate authorities
//! plus a private one from a PEM file, and how a refused certificate is told
//! apart from a broker that is away.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::ClientError;

/// The HTTP client, trusting the system's certificate authorities and
/// `authorities`. A machine without a CA bundle (a bare container) has no
/// system authorities, and reqwest's verifier will not start without any:
/// there `authorities` alone, so a plain `http://` broker is still reached
/// and an `https://` one's certificate refused as untrusted (asking for
/// `--ca`).
pub(crate) fn http_client(
    authorities: Vec<reqwest::Certificate>,
    connect_timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    let builder = || http_client_builder().connect_timeout(connect_timeout);
    builder()
        .tls_certs_merge(authorities.clone())
        .build()
        .or_else(|_| builder().tls_certs_only(authorities).build())
}

/// A builder of plain reqwest clients, for a program's requests of its own
/// (tests, tools). reqwest is built with rustls but no crypto provider of
/// its own (ring is the farm's, without cmake or OpenSSL), so
/// `reqwest::Client::new()` panics until one is installed; this installs
/// ring first, unless the program chose another.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// Makes ring the process's rustls provider, unless the program chose one
/// first.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means another provider is installed already; it serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The certificates of the PEM file `path` (`--ca`), each checked to be one
/// a client can trust as an authority.
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let invalid = |cause: String| ClientError::InvalidCa {
        path: path.to_path_buf(),
        cause,
    };
    let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("it is not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            "it holds no PEM certificate (a -----BEGIN CERTIFICATE----- block)".into(),
        ));
    }
    certs
        .into_iter()
        .map(|der| {
            rustls::RootCertStore::empty()
                .add(der.clone())
                .map_err(|e| invalid(format!("a certificate in it cannot be trusted: {e}")))?;
            reqwest::Certificate::from_der(&der).map_err(|e| invalid(e.to_string()))
        })
        .collect()
}

/// What was wrong with the broker's certificate, when that is why `error`
/// got no answer: TLS verified it and refused (an unknown authority, another
/// name, expired).
pub(crate) fn certificate_problem(error: &reqwest::Error) -> Option<String> {
    crate::error::causes(error).find_map(|cause| match cause.downcast_ref() {
        Some(tls @ rustls::Error::InvalidCertificate(_)) => Some(tls.to_string()),
        _ => None,
    })
}

/// What to check when `error` looks like the broker speaks the other
/// scheme: TLS that got no TLS back, or plain HTTP answered with TLS.
pub(crate) fn scheme_hint(error: &reqwest::Error, scheme: &str) -> Option<&'static str> {
    let mut causes = crate::error::causes(error);
    match scheme {
        "https"
            if causes
                .any(|c| matches!(c.downcast_ref(), Some(rustls::Error::InvalidMessage(_)))) =>
        {
            Some("does the broker serve plain HTTP? its address then starts with http://")
        }
        // A TLS alert read as an HTTP answer: hyper's words for it (the test
        // of plain HTTP against a TLS broker in tests/tls.rs holds them).
        "http" if causes.any(|c| c.to_string().contains("invalid HTTP version")) => {
            Some("does the broker serve HTTPS? its address then starts with https://")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_is_missing_or_not_a_certificate_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("renderfarm-client-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let text = dir.join("text.pem");
        std::fs::write(&text, "not a certificate\n").unwrap();
        let broken = dir.join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (path, says) in [
            (&missing, "cannot read it"),
            (&text, "no PEM certificate"),
            (&broken, "cannot be trusted"),
        ] {
            let error = read_ca_file(path).expect_err("refused");
            let message = error.to_string();
            assert!(matches!(error, ClientError::InvalidCa { .. }), "{error:?}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(says), "{message}");
            assert!(message.contains("--ca"), "{message}");
            assert!(!error.is_retryable());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
