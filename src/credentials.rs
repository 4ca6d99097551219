//! Issuing credentials, shared by the HTTP routes, `renderfarm token` with
//! direct access to the store, and the broker's first start: the secret's
//! randomness comes from the OS here, the rules from `domain::token`.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::domain::{plan_token, secret_hash, NewToken, Role, StoredToken};
use crate::store::{Store, StoreError};

/// 32 bytes from the operating system's randomness.
pub fn random_bytes() -> anyhow::Result<[u8; 32]> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random)
        .map_err(|e| anyhow::anyhow!("no randomness from the OS for a secret: {e}"))?;
    Ok(random)
}

/// Why a token was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Invalid(#[from] crate::domain::ValidationError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Randomness(#[from] anyhow::Error),
}

/// Plans and stores a new token; the answer holds its secret, which exists
/// nowhere else.
pub async fn issue(
    store: &dyn Store,
    name: &str,
    role: Role,
    lifetime: Option<Duration>,
    now: DateTime<Utc>,
) -> Result<NewToken, IssueError> {
    let new = plan_token(name, role, lifetime, Uuid::now_v7(), random_bytes()?, now)?;
    let token = store.create_token(new.token).await?;
    Ok(NewToken {
        token,
        secret: new.secret,
    })
}

/// A secret the deployment chose (compose's environment, a secrets file):
/// stored under `name` with `role` unless a token with that secret exists.
pub async fn adopt(
    store: &dyn Store,
    secret: &str,
    name: &str,
    role: Role,
    now: DateTime<Utc>,
) -> anyhow::Result<StoredToken> {
    let secret = secret.trim();
    if secret.len() < 32 || secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!(
            "the {} token given to the broker is too weak: use at least 32 characters without spaces, e.g. rf_$(openssl rand -hex 32)",
            role.as_str()
        );
    }
    let hash = secret_hash(secret);
    if let Some(existing) = store.token_by_hash(&hash).await? {
        if existing.role != role {
            anyhow::bail!(
                "the {} token given to the broker is stored already with the role {}; give each role its own secret",
                role.as_str(),
                existing.role.as_str()
            );
        }
        return Ok(existing);
    }
    let token = StoredToken {
        id: Uuid::now_v7(),
        name: name.to_string(),
        role,
        hash,
        created_at: now,
        expires_at: None,
        revoked_at: None,
        worker_id: None,
        session_of: None,
    };
    match store.create_token(token.clone()).await {
        Ok(t) => Ok(t),
        // Another replica adopted it at the same moment.
        Err(StoreError::AlreadyExists) => store
            .token_by_hash(&token.hash)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the adopted token vanished")),
        Err(e) => Err(e.into()),
    }
}

/// The credentials a broker starts with.
#[derive(Debug, Clone, Default)]
pub struct Bootstrap {
    /// An admin secret chosen by the deployment (`RENDERFARM_ADMIN_TOKEN`).
    pub admin_secret: Option<String>,
    /// An enrolment secret chosen by the deployment
    /// (`RENDERFARM_ENROLMENT_TOKEN`).
    pub enrolment_secret: Option<String>,
}

/// Stores the deployment's chosen secrets; on a store with no token at all
/// and none chosen, issues an admin token and returns its secret (to be
/// printed once).
pub async fn bootstrap(
    store: Arc<dyn Store>,
    chosen: &Bootstrap,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<NewToken>> {
    if let Some(secret) = &chosen.admin_secret {
        adopt(
            store.as_ref(),
            secret,
            "admin (deployment)",
            Role::Admin,
            now,
        )
        .await?;
    }
    if let Some(secret) = &chosen.enrolment_secret {
        adopt(
            store.as_ref(),
            secret,
            "workers (deployment)",
            Role::Worker,
            now,
        )
        .await?;
    }
    if chosen.admin_secret.is_some() || !store.list_tokens().await?.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        issue(store.as_ref(), "admin", Role::Admin, None, now).await?,
    ))
}
