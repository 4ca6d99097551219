//! The command line's view of the broker: the `renderfarm-client` crate, with
//! errors worded for a person at a terminal.

use std::sync::OnceLock;

use renderfarm_client::{BrokerClient, ClientError, ClientOptions};

/// The credential of this run of the command line (`--token`), set once
/// before any command talks to the broker.
static TOKEN: OnceLock<Option<String>> = OnceLock::new();

/// Sets the credential every client of this run sends.
pub fn use_token(token: Option<String>) {
    let _ = TOKEN.set(token);
}

/// A client of the broker at `base`, set up by `options` (`--ca`), with
/// this run's credential.
pub fn connect(base: &str, options: &ClientOptions) -> anyhow::Result<BrokerClient> {
    let token = TOKEN.get().cloned().flatten();
    Ok(BrokerClient::with_options(base, options)
        .map_err(explain(base))?
        .with_token(token))
}

/// Words a client error for the command line.
pub fn explain(base: &str) -> impl Fn(ClientError) -> anyhow::Error + '_ {
    move |e| {
        match e {
        // It answered (429 over its rate limit, 503 while its store is away)
        // and said when to come back.
        ClientError::Unreachable { cause, retry_after: Some(wait), .. } => anyhow::anyhow!(
            "the broker at {base} turned the request away ({cause}); try again in {} s",
            wait.as_secs()
        ),
        ClientError::Unreachable { cause, .. } => anyhow::anyhow!(
            "cannot reach the broker at {base} ({cause}): is `renderfarm serve` running? (--broker or RENDERFARM_BROKER to point elsewhere)"
        ),
        ClientError::NotFound(message) | ClientError::Conflict(message) => {
            anyhow::anyhow!("{message}")
        }
        ClientError::Unauthorized(message) => anyhow::anyhow!(
            "{message} (the command line sends --token or RENDERFARM_TOKEN)"
        ),
        ClientError::Forbidden(message) => anyhow::anyhow!("{message}"),
        ClientError::InsufficientStorage(message) => anyhow::anyhow!(
            "the broker's file storage is full: {message} (an operator frees room by deleting finished renders, or raises --storage-quota)"
        ),
        e @ (ClientError::LocalFile { .. } | ClientError::HashMismatch { .. }) => {
            anyhow::anyhow!("{e}")
        }
        ClientError::Rejected(status, message) => {
            anyhow::anyhow!("the broker answered {status}: {message}")
        }
        e @ ClientError::InvalidAddress { .. } => {
            anyhow::anyhow!("{e} (--broker or RENDERFARM_BROKER)")
        }
        e @ (ClientError::InvalidCa { .. } | ClientError::UntrustedCertificate { .. }) => {
            anyhow::anyhow!("{e}")
        }
    }
    }
}
