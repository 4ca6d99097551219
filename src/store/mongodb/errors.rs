//! The driver's errors, translated into the store's vocabulary here, once.

use crate::store::{StoreError, StoreResult};
use mongodb::error::{Error as DriverError, ErrorKind, WriteFailure};
use uuid::Uuid;

/// The server's code for a duplicate key.
pub(super) const DUPLICATE_KEY: i32 = 11000;

/// Codes that mean "this server cannot serve now; another may, or later".
pub(super) const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    50,    // MaxTimeMSExpired
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    112,   // WriteConflict
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// The server's error code, wherever the driver put it.
pub(super) fn error_code(e: &DriverError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|w| w.code)
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

pub(super) fn is_duplicate_key(e: &DriverError) -> bool {
    error_code(e) == Some(DUPLICATE_KEY)
}

impl From<DriverError> for StoreError {
    fn from(e: DriverError) -> Self {
        // Clients get a short reason; the driver's full account (topology,
        // labels) goes to the log.
        let unavailable = |why: String| {
            tracing::debug!(error = %e, "MongoDB unavailable");
            StoreError::Unavailable(why)
        };
        match e.kind.as_ref() {
            ErrorKind::ServerSelection { .. } => {
                return unavailable(
                    "no MongoDB server answered in time; check that MongoDB runs and that the URI names the right hosts"
                        .into(),
                )
            }
            ErrorKind::Io(io) => return unavailable(format!("the connection to MongoDB failed: {io}")),
            ErrorKind::ConnectionPoolCleared { .. } | ErrorKind::Shutdown => {
                return unavailable("the connection to MongoDB was lost".into())
            }
            ErrorKind::DnsResolve { message, .. } => {
                return unavailable(format!("the MongoDB hosts cannot be resolved: {message}"))
            }
            ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
                return unavailable(format!(
                    "MongoDB could not confirm the write: {}",
                    w.message
                ))
            }
            // Every document written, but not confirmed as the write
            // concern asks: the same as for a single write.
            ErrorKind::InsertMany(m)
                if m.write_errors.as_ref().is_none_or(|w| w.is_empty()) =>
            {
                if let Some(w) = &m.write_concern_error {
                    return unavailable(format!(
                        "MongoDB could not confirm the write: {}",
                        w.message
                    ));
                }
            }
            ErrorKind::Authentication { .. } => {
                return unavailable(
                    "MongoDB refused the credentials in the store URI; fix the URI and restart the broker"
                        .into(),
                )
            }
            _ => {}
        }
        let code = error_code(&e);
        if code.is_some_and(|c| TRANSIENT_CODES.contains(&c))
            || e.contains_label("RetryableWriteError")
            || e.contains_label("TransientTransactionError")
        {
            return unavailable(format!(
                "MongoDB cannot serve the request now (error code {})",
                code.map_or_else(|| "none".into(), |c| c.to_string())
            ));
        }
        if code == Some(DUPLICATE_KEY) {
            return StoreError::AlreadyExists;
        }
        StoreError::Unexpected(anyhow::Error::new(e).context("MongoDB operation failed"))
    }
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unexpected(anyhow::anyhow!("the MongoDB store holds {what}"))
}

pub(super) fn parse_uuid(s: &str, what: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| corrupt(format!("a {what} {s:?} that is not a UUID")))
}

pub(super) fn parse_opt_uuid(s: Option<&str>, what: &str) -> StoreResult<Option<Uuid>> {
    s.map(|s| parse_uuid(s, what)).transpose()
}
