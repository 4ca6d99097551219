//! SQLite's errors, translated into the store's vocabulary here, once.

use crate::store::StoreError;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable(format!("the database is busy: {e}"))
            }
            Some(ErrorCode::DiskFull) => {
                StoreError::Unavailable("the disk holding the data directory is full".into())
            }
            Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
                StoreError::Unavailable(format!("the database file cannot be written: {e}"))
            }
            _ => StoreError::Unexpected(e.into()),
        }
    }
}

/// The reader pool has no connection to give: worth retrying.
pub(super) fn pool_unavailable(e: r2d2::Error) -> StoreError {
    StoreError::Unavailable(format!("no database connection is free: {e}"))
}
