//! Path variables on MongoDB (`domain::validate_variable`): one document
//! per variable, `_id` its name; read by submits and by each broker's
//! variable cache, never by a claim.

use bson::doc;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use renderfarm_wire::PathVariable;
use serde::{Deserialize, Serialize};

use super::documents::bson_time;
use super::MongoStore;
use crate::store::{StoreError, StoreResult};

pub(super) const PATH_VARIABLES: &str = "path_variables";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PathVariableDoc {
    #[serde(rename = "_id")]
    name: String,
    linux: Option<String>,
    windows: Option<String>,
    macos: Option<String>,
    updated_at: bson::DateTime,
}

impl MongoStore {
    fn path_variable_docs(&self) -> StoreResult<mongodb::Collection<PathVariableDoc>> {
        Ok(self.db()?.collection(PATH_VARIABLES))
    }
}

pub(super) async fn list_path_variables(store: &MongoStore) -> StoreResult<Vec<PathVariable>> {
    let docs: Vec<PathVariableDoc> = store
        .path_variable_docs()?
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    Ok(docs
        .into_iter()
        .map(|d| PathVariable {
            name: d.name,
            linux: d.linux,
            windows: d.windows,
            macos: d.macos,
        })
        .collect())
}

pub(super) async fn put_path_variable(
    store: &MongoStore,
    variable: PathVariable,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let result = store
        .path_variable_docs()?
        .replace_one(
            doc! { "_id": &variable.name },
            PathVariableDoc {
                name: variable.name.clone(),
                linux: variable.linux,
                windows: variable.windows,
                macos: variable.macos,
                updated_at: bson_time(now),
            },
        )
        .upsert(true)
        .await?;
    Ok(result.upserted_id.is_some())
}

pub(super) async fn delete_path_variable(store: &MongoStore, name: &str) -> StoreResult<()> {
    let result = store
        .path_variable_docs()?
        .delete_one(doc! { "_id": name })
        .await?;
    if result.deleted_count == 0 {
        return Err(StoreError::not_found("path variable", name));
    }
    Ok(())
}
