//! Tokens: kept as the hash of their secret, found by it, revoked once.

use chrono::Duration;
use uuid::Uuid;

use super::t0;
use crate::domain::{plan_token, secret_hash, Role};
use crate::store::{Store, StoreError};

pub async fn tokens_are_kept_by_hash_listed_in_order_and_revoked_once(store: &dyn Store) {
    let alice = plan_token("alice", Role::Artist, None, Uuid::new_v4(), [1; 32], t0()).unwrap();
    let ci = plan_token(
        "ci",
        Role::Viewer,
        Some(Duration::days(90)),
        Uuid::new_v4(),
        [2; 32],
        t0() + Duration::seconds(1),
    )
    .unwrap();
    assert_eq!(
        store.create_token(alice.token.clone()).await.unwrap(),
        alice.token
    );
    store.create_token(ci.token.clone()).await.unwrap();
    assert_eq!(
        store.list_tokens().await.unwrap(),
        vec![alice.token.clone(), ci.token.clone()],
        "oldest first, as created"
    );
    assert!(
        store
            .list_tokens()
            .await
            .unwrap()
            .iter()
            .all(|t| t.hash != alice.secret && t.hash != ci.secret),
        "no secret is stored"
    );

    assert_eq!(
        store.token_by_hash(&secret_hash(&ci.secret)).await.unwrap(),
        Some(ci.token.clone())
    );
    assert_eq!(
        store
            .token_by_hash(&secret_hash("rf_unknown"))
            .await
            .unwrap(),
        None
    );

    let revoked_at = t0() + Duration::hours(1);
    let revoked = store
        .revoke_token(alice.token.id, revoked_at)
        .await
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(revoked_at));
    let again = store
        .revoke_token(alice.token.id, revoked_at + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        again.revoked_at,
        Some(revoked_at),
        "revoked once, when first"
    );
    assert_eq!(
        store
            .token_by_hash(&alice.token.hash)
            .await
            .unwrap()
            .and_then(|t| t.revoked_at),
        Some(revoked_at),
        "a revoked token is still found, to say why it is refused"
    );
    assert!(matches!(
        store.revoke_token(Uuid::new_v4(), revoked_at).await,
        Err(StoreError::NotFound { kind: "token", .. })
    ));

    // Two tokens with one secret cannot be: the hash is unique.
    let twin = plan_token("twin", Role::Admin, None, Uuid::new_v4(), [2; 32], t0()).unwrap();
    assert!(matches!(
        store.create_token(twin.token).await,
        Err(StoreError::AlreadyExists)
    ));
}
