//! Tokens: stored as the hash of their secret, looked up by it.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};
use uuid::Uuid;

use super::{rows::*, *};
use crate::domain::{Role, StoredToken};
use crate::store::{StoreError, StoreResult};

const TOKEN_COLUMNS: &str =
    "id, name, role, hash, created_at, expires_at, revoked_at, worker_id, session_of";

fn token_from_row(row: &Row) -> rusqlite::Result<StoredToken> {
    Ok(StoredToken {
        id: get_uuid(row, 0)?,
        name: row.get(1)?,
        role: get_enum(row, 2, Role::parse)?,
        hash: row.get(3)?,
        created_at: get_time(row, 4)?,
        expires_at: get_opt_time(row, 5)?,
        revoked_at: get_opt_time(row, 6)?,
        worker_id: get_opt_uuid(row, 7)?,
        session_of: get_opt_uuid(row, 8)?,
    })
}

pub(super) async fn create_token(
    store: &SqliteStore,
    token: StoredToken,
) -> StoreResult<StoredToken> {
    store
        .write(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO tokens (id, name, role, hash, created_at, expires_at, revoked_at, \
                     worker_id, session_of) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    token.id.to_string(),
                    token.name,
                    token.role.as_str(),
                    token.hash,
                    ts(token.created_at),
                    token.expires_at.map(ts),
                    token.revoked_at.map(ts),
                    token.worker_id.map(|w| w.to_string()),
                    token.session_of.map(|p| p.to_string()),
                ]);
            match inserted {
                Ok(_) => Ok(token),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::AlreadyExists)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
}

pub(super) async fn list_tokens(store: &SqliteStore) -> StoreResult<Vec<StoredToken>> {
    store
        .read(|conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY seq"))?
                .query_map([], token_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
}

pub(super) async fn token_by_hash(
    store: &SqliteStore,
    hash: &str,
) -> StoreResult<Option<StoredToken>> {
    let hash = hash.to_string();
    store
        .read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"
                ))?
                .query_row([hash], token_from_row)
                .optional()?)
        })
        .await
}

pub(super) async fn revoke_token(
    store: &SqliteStore,
    id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<StoredToken> {
    store
        .write(move |conn| {
            // A browser's sessions of the token end with it.
            conn.prepare_cached(
                "UPDATE tokens SET revoked_at = ?2 WHERE session_of = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![id.to_string(), ts(now)])?;
            conn.prepare_cached(&format!(
                "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1 \
                 RETURNING {TOKEN_COLUMNS}"
            ))?
            .query_row(params![id.to_string(), ts(now)], token_from_row)
            .optional()?
            .ok_or_else(|| StoreError::not_found("token", id))
        })
        .await
}

pub(super) async fn revoke_worker_secrets(
    store: &SqliteStore,
    worker_id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    store
        .write(move |conn| {
            Ok(conn
                .prepare_cached(
                    "UPDATE tokens SET revoked_at = ?2 WHERE worker_id = ?1 AND revoked_at IS NULL",
                )?
                .execute(params![worker_id.to_string(), ts(now)])? as u64)
        })
        .await
}
