//! The command line's view of the broker: the `renderfarm-client` crate, with
//! errors worded for a person at a terminal.

use renderfarm_client::{BrokerClient, ClientError, ClientOptions};

/// A client of the broker at `base`, set up by `options` (`--ca`).
pub fn connect(base: &str, options: &ClientOptions) -> anyhow::Result<BrokerClient> {
    BrokerClient::with_options(base, options).map_err(explain(base))
}

/// Words a client error for the command line.
pub fn explain(base: &str) -> impl Fn(ClientError) -> anyhow::Error + '_ {
    move |e| {
        match e {
        ClientError::Unreachable { cause, .. } => anyhow::anyhow!(
            "cannot reach the broker at {base} ({cause}): is `renderfarm serve` running? (--broker or RENDERFARM_BROKER to point elsewhere)"
        ),
        ClientError::NotFound(message) | ClientError::Conflict(message) => {
            anyhow::anyhow!("{message}")
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
