//! What can go wrong talking to the broker, sorted by what the caller should
//! do next, and how an HTTP answer becomes one of those.

use std::error::Error as StdError;
use std::path::PathBuf;
use std::time::Duration;

use renderfarm_wire::ErrorBody;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

/// What went wrong talking to the broker, sorted by what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker's address is not one this client can talk to; nothing was
    /// sent.
    #[error("{base} is not a broker address ({cause}); give one such as http://127.0.0.1:8080")]
    InvalidAddress { base: String, cause: String },
    /// The certificate authority file (`--ca`) cannot be used; nothing was
    /// sent.
    #[error("--ca {}: {cause}; give the PEM file of the certificate authority that signed the broker's certificate", path.display())]
    InvalidCa { path: PathBuf, cause: String },
    /// The broker's TLS certificate is not one this client trusts (signed by
    /// an authority it does not know, made for another name, expired).
    /// Retrying will not help until the setup changes.
    #[error("the broker at {base} presented a TLS certificate this client does not trust ({cause}): give the certificate of the authority that signed it with --ca FILE (or RENDERFARM_CA), and check that the certificate names the host in the broker's address")]
    UntrustedCertificate { base: String, cause: String },
    /// The broker could not be reached, timed out, or is overloaded or
    /// restarting (5xx, 429, 408): try again later, not before `retry_after`
    /// when the broker said when (its `Retry-After`).
    #[error("the broker at {base} is unreachable: {cause}")]
    Unreachable {
        base: String,
        cause: String,
        retry_after: Option<Duration>,
    },
    /// 409: the lease is stale, the worker is disabled, or the change is not
    /// allowed now. Retrying the same request will not help.
    #[error("the broker refused: {0}")]
    Conflict(String),
    /// 401: no usable credential (missing, unknown, expired or revoked);
    /// a worker agent enrols again, a person needs a valid token.
    #[error("the broker needs a valid credential: {0}")]
    Unauthorized(String),
    /// 403: the credential is valid but lacks the right (a role too low, a
    /// worker acting as another). Retrying will not help.
    #[error("the broker refused this credential: {0}")]
    Forbidden(String),
    /// 404: the broker does not know this render, worker or task (a worker
    /// agent registers again: the broker may have lost its data).
    #[error("the broker does not know it: {0}")]
    NotFound(String),
    /// 507: the broker's file storage is full (its `--storage-quota`, or its
    /// disk). Retrying will not help until an operator frees room.
    #[error("the broker has no room for it: {0}")]
    InsufficientStorage(String),
    /// A local file to send or to write could not be used; nothing (more)
    /// was sent.
    #[error("{}: {cause}", path.display())]
    LocalFile { path: PathBuf, cause: String },
    /// A download whose bytes do not have the hash asked for; it was removed.
    #[error("the file downloaded as {expected} has the SHA-256 {actual}; it was removed, download it again")]
    HashMismatch { expected: String, actual: String },
    /// Any other 4xx, or an answer this client cannot read: the broker will
    /// never accept this request from this program.
    #[error("the broker rejected the request ({0}): {1}")]
    Rejected(StatusCode, String),
}

impl ClientError {
    /// True when the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// How long the broker asked to be left alone, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Unreachable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error for a failed answer from the broker at `base`: its status,
    /// its body `text` (the message of an [`ErrorBody`], else the text as
    /// is), and its `Retry-After`.
    pub(crate) fn from_answer(
        base: &str,
        status: StatusCode,
        text: String,
        retry_after: Option<Duration>,
    ) -> Self {
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.message)
            .unwrap_or(text);
        match status {
            StatusCode::CONFLICT => ClientError::Conflict(message),
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized(message),
            StatusCode::FORBIDDEN => ClientError::Forbidden(message),
            StatusCode::NOT_FOUND => ClientError::NotFound(message),
            StatusCode::INSUFFICIENT_STORAGE => ClientError::InsufficientStorage(message),
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                ClientError::Unreachable {
                    base: base.to_string(),
                    cause: format!("{s}: {message}"),
                    retry_after,
                }
            }
            s => ClientError::Rejected(s, message),
        }
    }
}

/// `error` and what caused it, outermost first. An io::Error's `source()`
/// skips the error it wraps (a TLS error, perhaps inside another io::Error),
/// so the chain looks inside instead.
pub(crate) fn causes<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(
        Some(error),
        |&error: &&'a (dyn StdError + 'static)| match error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => error.source(),
        },
    )
}

/// `error` with its causes, `: `-separated ("error sending request …:
/// client error (Connect): tcp connect error: Connection refused"), each
/// said once (an io::Error shows the error it wraps).
pub(crate) fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut text = String::new();
    let mut last = String::new();
    for cause in causes(error) {
        let message = cause.to_string();
        if !message.is_empty() && message != last {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
        last = message;
    }
    text
}

/// The answer's `Retry-After`, if it gave one this client understands.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?)
}

/// A `Retry-After` in whole seconds, the only form the broker sends; an
/// HTTP date or anything else counts as not given.
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_whole_seconds_and_anything_else_is_ignored() {
        let cases = [
            ("5", Some(Duration::from_secs(5))),
            (" 30 ", Some(Duration::from_secs(30))),
            ("0", Some(Duration::ZERO)),
            ("", None),
            ("-1", None),
            ("1.5", None),
            ("soon", None),
            ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ];
        for (value, want) in cases {
            assert_eq!(parse_retry_after(value), want, "{value:?}");
        }
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }

    #[test]
    fn answers_are_sorted_by_what_the_caller_should_do() {
        let body = |message: &str| format!(r#"{{"error": "x", "message": "{message}"}}"#);
        let five = Some(Duration::from_secs(5));
        let error = |status: u16, text: String, retry_after| {
            ClientError::from_answer(
                "http://b",
                StatusCode::from_u16(status).unwrap(),
                text,
                retry_after,
            )
        };

        let e = error(409, body("stale lease"), None);
        assert!(
            matches!(&e, ClientError::Conflict(m) if m == "stale lease"),
            "{e:?}"
        );
        assert!(!e.is_retryable());

        let e = error(404, body("no such task"), None);
        assert!(
            matches!(&e, ClientError::NotFound(m) if m == "no such task"),
            "{e:?}"
        );

        for status in [429, 503, 500, 408] {
            let e = error(status, body("busy"), five);
            assert!(e.is_retryable(), "{status}: {e:?}");
            assert_eq!(e.retry_after(), five, "{status}");
            assert!(e.to_string().contains("busy"), "{e}");
        }
        assert_eq!(error(503, body("away"), None).retry_after(), None);

        // A full store is not a broker that is away: waiting does not help.
        let e = error(507, body("quota of 1 GiB reached"), five);
        assert!(
            matches!(&e, ClientError::InsufficientStorage(m) if m == "quota of 1 GiB reached"),
            "{e:?}"
        );
        assert!(!e.is_retryable());

        for status in [400, 413, 415, 405] {
            let e = error(status, body("bad"), five);
            assert!(
                matches!(&e, ClientError::Rejected(s, m) if s.as_u16() == status && m == "bad"),
                "{e:?}"
            );
            assert!(!e.is_retryable());
            assert_eq!(e.retry_after(), None, "only a retryable error waits");
        }

        // Not an error body (a proxy's page, /ready's report): the text as is.
        let e = error(502, "<html>Bad Gateway</html>".into(), None);
        assert!(e.to_string().contains("<html>Bad Gateway</html>"), "{e}");
    }
}
