//! Path variables (`domain::validate_variable`): one row per variable, read
//! by submits and by the broker's variable cache, never by a claim.

use chrono::{DateTime, Utc};
use renderfarm_wire::PathVariable;
use rusqlite::params;

use super::rows::ts;
use super::SqliteStore;
use crate::store::{StoreError, StoreResult};

pub(super) async fn list_path_variables(store: &SqliteStore) -> StoreResult<Vec<PathVariable>> {
    store
        .read(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT name, linux, windows, macos FROM path_variables ORDER BY name",
                )?
                .query_map([], |row| {
                    Ok(PathVariable {
                        name: row.get(0)?,
                        linux: row.get(1)?,
                        windows: row.get(2)?,
                        macos: row.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
}

pub(super) async fn put_path_variable(
    store: &SqliteStore,
    variable: PathVariable,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    store
        .write(move |conn| {
            let existed = conn
                .prepare_cached("SELECT 1 FROM path_variables WHERE name = ?1")?
                .exists([&variable.name])?;
            conn.prepare_cached(
                "INSERT INTO path_variables (name, linux, windows, macos, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO UPDATE SET \
                 linux = ?2, windows = ?3, macos = ?4, updated_at = ?5",
            )?
            .execute(params![
                variable.name,
                variable.linux,
                variable.windows,
                variable.macos,
                ts(now)
            ])?;
            Ok(!existed)
        })
        .await
}

pub(super) async fn delete_path_variable(store: &SqliteStore, name: &str) -> StoreResult<()> {
    let name = name.to_string();
    store
        .write(move |conn| {
            let gone = conn
                .prepare_cached("DELETE FROM path_variables WHERE name = ?1")?
                .execute([&name])?;
            if gone == 0 {
                return Err(StoreError::not_found("path variable", name));
            }
            Ok(())
        })
        .await
}
