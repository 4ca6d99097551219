//! The MongoDB schema as versioned files under `migrations/mongodb/`:
//! collections with `$jsonSchema` validators, and indexes. Each applied
//! version is recorded in the `migrations` collection; applying is idempotent
//! (an existing collection gets its validator through `collMod`, an index
//! that exists with the same definition is left alone), so two brokers
//! starting at once, or `renderfarm migrate` run twice, change nothing more.

use std::collections::HashSet;

use bson::{doc, Bson, Document};
use chrono::Utc;
use futures::TryStreamExt;
use mongodb::options::{IndexOptions, ValidationAction, ValidationLevel};
use mongodb::{Database, IndexModel};
use serde::Deserialize;

use super::errors::{error_code, is_duplicate_key};
use crate::store::{StoreError, StoreResult};

/// The collection that records applied versions.
pub const MIGRATIONS: &str = "migrations";

/// Every migration, oldest first; the number in the name is its version.
const FILES: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("../../../migrations/mongodb/0001_initial.json"),
    ),
    (
        "0002_scheduler",
        include_str!("../../../migrations/mongodb/0002_scheduler.json"),
    ),
    (
        "0003_one_task_per_worker",
        include_str!("../../../migrations/mongodb/0003_one_task_per_worker.json"),
    ),
    (
        "0004_renders_in_writing",
        include_str!("../../../migrations/mongodb/0004_renders_in_writing.json"),
    ),
    (
        "0005_tokens",
        include_str!("../../../migrations/mongodb/0005_tokens.json"),
    ),
    (
        "0006_worker_secrets",
        include_str!("../../../migrations/mongodb/0006_worker_secrets.json"),
    ),
    (
        "0007_owner",
        include_str!("../../../migrations/mongodb/0007_owner.json"),
    ),
    (
        "0008_events",
        include_str!("../../../migrations/mongodb/0008_events.json"),
    ),
    (
        "0009_render_listing",
        include_str!("../../../migrations/mongodb/0009_render_listing.json"),
    ),
    (
        "0010_files",
        include_str!("../../../migrations/mongodb/0010_files.json"),
    ),
    (
        "0011_webhooks",
        include_str!("../../../migrations/mongodb/0011_webhooks.json"),
    ),
    (
        "0012_previews",
        include_str!("../../../migrations/mongodb/0012_previews.json"),
    ),
    (
        "0013_warm_workers",
        include_str!("../../../migrations/mongodb/0013_warm_workers.json"),
    ),
    (
        "0014_videos",
        include_str!("../../../migrations/mongodb/0014_videos.json"),
    ),
    (
        "0015_dependencies",
        include_str!("../../../migrations/mongodb/0015_dependencies.json"),
    ),
    (
        "0016_frame_order",
        include_str!("../../../migrations/mongodb/0016_frame_order.json"),
    ),
    (
        "0017_blocklist",
        include_str!("../../../migrations/mongodb/0017_blocklist.json"),
    ),
    (
        "0018_worker_hours",
        include_str!("../../../migrations/mongodb/0018_worker_hours.json"),
    ),
    (
        "0019_path_variables",
        include_str!("../../../migrations/mongodb/0019_path_variables.json"),
    ),
    (
        "0020_adaptive_chunks",
        include_str!("../../../migrations/mongodb/0020_adaptive_chunks.json"),
    ),
];

/// The server's code for "collection already exists".
const NAMESPACE_EXISTS: i32 = 48;

/// One migration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    pub version: i64,
    pub description: String,
    pub collections: Vec<CollectionSpec>,
    #[serde(skip)]
    pub name: &'static str,
}

/// A collection, its validator and its indexes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    pub name: String,
    /// Parsed straight into BSON so that key order (which index keys depend
    /// on) is kept.
    #[serde(default)]
    pub validator: Option<Document>,
    #[serde(default)]
    pub indexes: Vec<IndexSpec>,
}

/// An index as `createIndexes` takes it; only the options we use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSpec {
    pub name: String,
    pub key: Document,
    #[serde(default)]
    pub unique: bool,
    #[serde(default, rename = "partialFilterExpression")]
    pub partial_filter_expression: Option<Document>,
    #[serde(default, rename = "expireAfterSeconds")]
    pub expire_after_seconds: Option<u64>,
}

impl IndexSpec {
    fn model(&self) -> IndexModel {
        let options = IndexOptions::builder()
            .name(self.name.clone())
            .unique(self.unique.then_some(true))
            .partial_filter_expression(self.partial_filter_expression.clone())
            .expire_after(
                self.expire_after_seconds
                    .map(std::time::Duration::from_secs),
            )
            .build();
        IndexModel::builder()
            .keys(self.key.clone())
            .options(options)
            .build()
    }
}

/// Every migration, parsed and checked to be numbered in order: each
/// version above the one before and matching its file name. A version may be
/// skipped (one written on another branch takes its number when it is
/// merged): a database records the versions it took, not a count, so one
/// that took a later version still takes the earlier one when it comes.
pub fn all() -> StoreResult<Vec<Migration>> {
    let mut out: Vec<Migration> = Vec::with_capacity(FILES.len());
    for (name, text) in FILES {
        let mut m: Migration = serde_json::from_str(text).map_err(|e| {
            StoreError::Unexpected(anyhow::anyhow!("migration {name} is not valid: {e}"))
        })?;
        m.name = name;
        let above = out.last().map_or(0, |prev| prev.version);
        let numbered = name.split('_').next().and_then(|n| n.parse::<i64>().ok());
        if m.version <= above || numbered != Some(m.version) {
            return Err(StoreError::Unexpected(anyhow::anyhow!(
                "migration {name} has version {}, expected one above {above} matching its file name",
                m.version
            )));
        }
        out.push(m);
    }
    Ok(out)
}

async fn applied_versions(db: &Database) -> StoreResult<HashSet<i64>> {
    let records: Vec<Document> = db
        .collection::<Document>(MIGRATIONS)
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    Ok(records
        .iter()
        .filter_map(|d| match d.get("_id") {
            Some(Bson::Int64(v)) => Some(*v),
            Some(Bson::Int32(v)) => Some(i64::from(*v)),
            _ => None,
        })
        .collect())
}

/// The names of the migrations not yet applied to `db`.
pub async fn pending(db: &Database) -> StoreResult<Vec<&'static str>> {
    let applied = applied_versions(db).await?;
    Ok(all()?
        .into_iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| m.name)
        .collect())
}

/// Applies the pending migrations in order; returns the names applied now.
pub async fn apply(db: &Database) -> StoreResult<Vec<&'static str>> {
    let applied = applied_versions(db).await?;
    let mut done = Vec::new();
    for m in all()? {
        if applied.contains(&m.version) {
            continue;
        }
        apply_one(db, &m).await?;
        let record = doc! {
            "_id": m.version,
            "name": m.name,
            "description": &m.description,
            "applied_at": bson::DateTime::from_chrono(Utc::now()),
        };
        match db
            .collection::<Document>(MIGRATIONS)
            .insert_one(record)
            .await
        {
            Ok(_) => {}
            // Another broker applied and recorded it at the same time.
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(migration = m.name, "MongoDB migration applied");
        done.push(m.name);
    }
    Ok(done)
}

async fn apply_one(db: &Database, m: &Migration) -> StoreResult<()> {
    let existing: HashSet<String> = db.list_collection_names().await?.into_iter().collect();
    for c in &m.collections {
        let mut exists = existing.contains(&c.name);
        if !exists {
            let mut create = db.create_collection(&c.name);
            if let Some(validator) = &c.validator {
                create = create
                    .validator(validator.clone())
                    .validation_level(ValidationLevel::Strict)
                    .validation_action(ValidationAction::Error);
            }
            match create.await {
                Ok(()) => {}
                Err(e) if error_code(&e) == Some(NAMESPACE_EXISTS) => exists = true,
                Err(e) => return Err(e.into()),
            }
        }
        if exists {
            if let Some(validator) = &c.validator {
                db.run_command(doc! {
                    "collMod": &c.name,
                    "validator": validator.clone(),
                    "validationLevel": "strict",
                    "validationAction": "error",
                })
                .await?;
            }
        }
        if !c.indexes.is_empty() {
            db.collection::<Document>(&c.name)
                .create_indexes(c.indexes.iter().map(IndexSpec::model))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_files_parse_and_are_numbered_in_order() {
        let all = all().unwrap();
        assert_eq!(all.first().map(|m| m.version), Some(1));
        assert_eq!(all.first().map(|m| m.name), Some("0001_initial"));
        for pair in all.windows(2) {
            assert!(pair[0].version < pair[1].version, "{}", pair[1].name);
        }
    }

    /// The index `name` of `collection`, as the migrations define it.
    fn index(collection: &str, name: &str) -> IndexSpec {
        all()
            .unwrap()
            .into_iter()
            .flat_map(|m| m.collections)
            .filter(|c| c.name == collection)
            .flat_map(|c| c.indexes)
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no index {name} on {collection}"))
    }

    #[test]
    fn index_keys_keep_the_order_written_in_the_file() {
        let claim = index("tasks", super::super::tasks::CLAIM_INDEX);
        let keys: Vec<&str> = claim.key.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "status",
                "runnable",
                "priority",
                "render_seq",
                "claim_rank",
                "frame_start"
            ]
        );
        assert_eq!(claim.key.get("priority").and_then(Bson::as_i64), Some(-1));
        // The claim's sort must be the index's order after its equality fields.
        let sort = super::super::rules::claim_sort();
        let sort_keys: Vec<&str> = sort.keys().map(String::as_str).collect();
        assert_eq!(&keys[2..], sort_keys.as_slice());
    }

    #[test]
    fn validators_are_json_schema_and_keep_their_operator_keys() {
        for c in &all().unwrap()[0].collections {
            let validator = c.validator.as_ref().expect("every collection is validated");
            let schema = validator.get_document("$jsonSchema").unwrap();
            assert_eq!(schema.get_str("bsonType").unwrap(), "object", "{}", c.name);
        }
    }

    #[test]
    fn index_specs_become_index_models_with_their_names_and_options() {
        let by_worker = index("tasks", "tasks_running_by_worker").model();
        let options = by_worker.options.unwrap();
        assert_eq!(options.name.as_deref(), Some("tasks_running_by_worker"));
        assert_eq!(
            options.partial_filter_expression,
            Some(doc! { "status": "running" })
        );
        assert_eq!(options.unique, None);
        let by_seq = index("renders", "renders_by_seq").model();
        assert_eq!(by_seq.options.unwrap().unique, Some(true));
    }
}
