//! Tokens: stored as the hash of their secret, looked up by it.

use bson::doc;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::documents::bson_time;
use super::errors::{corrupt, is_duplicate_key, parse_uuid};
use super::MongoStore;
use crate::domain::{Role, StoredToken};
use crate::store::{StoreError, StoreResult};

pub(super) const TOKENS: &str = "tokens";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TokenDoc {
    #[serde(rename = "_id")]
    id: String,
    /// Creation order, for listings.
    seq: i64,
    name: String,
    role: String,
    hash: String,
    created_at: bson::DateTime,
    expires_at: Option<bson::DateTime>,
    revoked_at: Option<bson::DateTime>,
    #[serde(default)]
    worker_id: Option<String>,
    #[serde(default)]
    session_of: Option<String>,
}

impl TokenDoc {
    fn to_token(&self) -> StoreResult<StoredToken> {
        Ok(StoredToken {
            id: parse_uuid(&self.id, "token id")?,
            name: self.name.clone(),
            role: Role::parse(&self.role)
                .ok_or_else(|| corrupt(format!("token {} with role {:?}", self.id, self.role)))?,
            hash: self.hash.clone(),
            created_at: self.created_at.to_chrono(),
            expires_at: self.expires_at.map(bson::DateTime::to_chrono),
            revoked_at: self.revoked_at.map(bson::DateTime::to_chrono),
            worker_id: self
                .worker_id
                .as_deref()
                .map(|w| parse_uuid(w, "token's worker id"))
                .transpose()?,
            session_of: self
                .session_of
                .as_deref()
                .map(|p| parse_uuid(p, "token's parent id"))
                .transpose()?,
        })
    }
}

pub(super) async fn create_token(
    store: &MongoStore,
    token: StoredToken,
) -> StoreResult<StoredToken> {
    let seq = store.next_seq(TOKENS).await?;
    let doc = TokenDoc {
        id: token.id.to_string(),
        seq,
        name: token.name.clone(),
        role: token.role.as_str().into(),
        hash: token.hash.clone(),
        created_at: bson_time(token.created_at),
        expires_at: token.expires_at.map(bson_time),
        revoked_at: token.revoked_at.map(bson_time),
        worker_id: token.worker_id.map(|w| w.to_string()),
        session_of: token.session_of.map(|p| p.to_string()),
    };
    match store.tokens()?.insert_one(&doc).await {
        Ok(_) => doc.to_token(),
        Err(e) if is_duplicate_key(&e) => Err(StoreError::AlreadyExists),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn list_tokens(store: &MongoStore) -> StoreResult<Vec<StoredToken>> {
    let docs: Vec<TokenDoc> = store
        .tokens()?
        .find(doc! {})
        .sort(doc! { "seq": 1 })
        .await?
        .try_collect()
        .await?;
    docs.iter().map(TokenDoc::to_token).collect()
}

pub(super) async fn token_by_hash(
    store: &MongoStore,
    hash: &str,
) -> StoreResult<Option<StoredToken>> {
    store
        .tokens()?
        .find_one(doc! { "hash": hash })
        .await?
        .as_ref()
        .map(TokenDoc::to_token)
        .transpose()
}

pub(super) async fn revoke_token(
    store: &MongoStore,
    id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<StoredToken> {
    let key = id.to_string();
    // Only a token not revoked yet takes `now`; one revoked already keeps
    // its time. A browser's sessions of the token end with it.
    store
        .tokens()?
        .update_many(
            doc! {
                "$or": [ { "_id": &key }, { "session_of": &key } ],
                "revoked_at": null,
            },
            doc! { "$set": { "revoked_at": bson_time(now) } },
        )
        .await?;
    store
        .tokens()?
        .find_one(doc! { "_id": &key })
        .await?
        .ok_or_else(|| StoreError::not_found("token", id))?
        .to_token()
}

pub(super) async fn revoke_worker_secrets(
    store: &MongoStore,
    worker_id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<u64> {
    Ok(store
        .tokens()?
        .update_many(
            doc! { "worker_id": worker_id.to_string(), "revoked_at": null },
            doc! { "$set": { "revoked_at": bson_time(now) } },
        )
        .await?
        .modified_count)
}
