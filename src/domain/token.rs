//! Credentials: bearer tokens with a role, stored as a SHA-256 of the secret
//! only. A fast hash is right for secrets of 256 random bits (nobody guesses
//! one, so nothing is gained by slowing the check down), and it keeps the
//! check cheap on every request. Pure: the secret's randomness and "now" are
//! arguments.

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{validate_name, ValidationError};

/// What a token lets its holder do. `Viewer < Artist < Operator < Admin`;
/// `Worker` is apart: it enrols render machines and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Submits renders and changes its own.
    Artist,
    /// Every render and worker action, the scheduler routes.
    Operator,
    /// Tokens, and everything an operator may do.
    Admin,
    /// Registers worker agents.
    Worker,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Artist,
        Role::Operator,
        Role::Admin,
        Role::Worker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Artist => "artist",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Where the role stands among the people's roles; `None` for `Worker`.
    fn rank(self) -> Option<u8> {
        match self {
            Role::Viewer => Some(0),
            Role::Artist => Some(1),
            Role::Operator => Some(2),
            Role::Admin => Some(3),
            Role::Worker => None,
        }
    }

    /// Whether a holder of this role may do what `needed` may.
    pub fn grants(self, needed: Role) -> bool {
        match (self.rank(), needed.rank()) {
            (Some(have), Some(need)) => have >= need,
            _ => self == needed,
        }
    }
}

/// What a listing's `owner` says to mean "the caller".
pub const OWNER_ME: &str = "me";

/// The prefix of every secret, so that one pasted in the wrong place (a log,
/// a chat) is recognisable and secret scanners can find it.
pub const SECRET_PREFIX: &str = "rf_";

/// A secret from 32 random bytes: the prefix and 64 hex digits.
pub fn secret_from(random: [u8; 32]) -> String {
    format!("{SECRET_PREFIX}{}", hex::encode(random))
}

/// What is stored of a secret: its SHA-256, in hex.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(secret_digest(secret))
}

/// A secret's SHA-256 as bytes: what a broker remembers verified secrets
/// by, so that a request it already knows costs no hex string.
pub fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` is the one whose hash is `stored`, in time that does not
/// depend on where they differ.
pub fn secret_matches(secret: &str, stored: &str) -> bool {
    secret_hash(secret)
        .as_bytes()
        .ct_eq(stored.as_bytes())
        .into()
}

/// A token as stored: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The registered worker this secret identifies; such a token acts as
    /// that worker only. `None` for people's tokens and enrolment tokens.
    pub worker_id: Option<Uuid>,
    /// The token a browser signed in with, when this is that sign-in's
    /// session: it dies with its parent.
    pub session_of: Option<Uuid>,
}

/// Why a presented token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the token expired; ask an admin for a new one (renderfarm token create)")]
    Expired,
    #[error("the token was revoked; ask an admin for a new one (renderfarm token create)")]
    Revoked,
}

impl StoredToken {
    /// Whether the token is good at `now`.
    pub fn usable_at(&self, now: DateTime<Utc>) -> Result<(), TokenRefusal> {
        if self.revoked_at.is_some_and(|at| at <= now) {
            return Err(TokenRefusal::Revoked);
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return Err(TokenRefusal::Expired);
        }
        Ok(())
    }
}

/// A token to store, and its secret, shown once and never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub token: StoredToken,
    pub secret: String,
}

/// The longest a token may live, so that a typo ("90000d") is caught.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::days(10 * 365);

/// Plans a token named `name` with `role`, valid for `lifetime` (forever when
/// `None`) from `now`, with a secret made of `random`.
pub fn plan_token(
    name: &str,
    role: Role,
    lifetime: Option<Duration>,
    id: Uuid,
    random: [u8; 32],
    now: DateTime<Utc>,
) -> Result<NewToken, ValidationError> {
    let name = validate_name("name", name)?;
    if name.eq_ignore_ascii_case(OWNER_ME) {
        return Err(ValidationError::new(
            "name",
            "\"me\" stands for the caller in listings (GET /renders?owner=me); give the person's own name",
        ));
    }
    if let Some(lifetime) = lifetime {
        if lifetime <= Duration::zero() || lifetime > MAX_TOKEN_LIFETIME {
            return Err(ValidationError::new(
                "expires",
                "must be a duration between 1 second and 10 years, e.g. 90d, or none for a token that does not expire",
            ));
        }
    }
    let secret = secret_from(random);
    Ok(NewToken {
        token: StoredToken {
            id,
            name,
            role,
            hash: secret_hash(&secret),
            created_at: now,
            expires_at: lifetime.map(|l| now + l),
            revoked_at: None,
            worker_id: None,
            session_of: None,
        },
        secret,
    })
}

/// Plans the secret of a worker just registered: it acts as that worker
/// only, and lives until an operator revokes it or removes the worker.
pub fn plan_worker_secret(
    worker_id: Uuid,
    worker_name: &str,
    id: Uuid,
    random: [u8; 32],
    now: DateTime<Utc>,
) -> NewToken {
    let secret = secret_from(random);
    NewToken {
        token: StoredToken {
            id,
            name: format!("worker {worker_name}"),
            role: Role::Worker,
            hash: secret_hash(&secret),
            created_at: now,
            expires_at: None,
            revoked_at: None,
            worker_id: Some(worker_id),
            session_of: None,
        },
        secret,
    }
}

/// How long a browser's sign-in lasts: a working day and then some.
pub const SESSION_LIFETIME: Duration = Duration::hours(12);

/// Plans a browser session for the holder of `parent`: same name and role,
/// for [`SESSION_LIFETIME`] or until `parent` expires, whichever is sooner.
pub fn plan_session(
    parent: &StoredToken,
    id: Uuid,
    random: [u8; 32],
    now: DateTime<Utc>,
) -> NewToken {
    let secret = secret_from(random);
    let ends = now + SESSION_LIFETIME;
    NewToken {
        token: StoredToken {
            id,
            name: parent.name.clone(),
            role: parent.role,
            hash: secret_hash(&secret),
            created_at: now,
            expires_at: Some(parent.expires_at.map_or(ends, |p| p.min(ends))),
            revoked_at: None,
            worker_id: None,
            session_of: Some(parent.id),
        },
        secret,
    }
}

/// The value a browser session's holder must send back in `X-CSRF-Token` on
/// every change it asks for: derived from the session's secret, so it needs
/// no storage, and a page of another site that cannot read the cookie cannot
/// compute it.
pub fn csrf_for(session_secret: &str) -> String {
    hex::encode(Sha256::digest(format!("csrf:{session_secret}").as_bytes()))
}

/// Whether `presented` is the CSRF value of `session_secret`, compared in
/// constant time.
pub fn csrf_matches(session_secret: &str, presented: &str) -> bool {
    csrf_for(session_secret)
        .as_bytes()
        .ct_eq(presented.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn roles_grant_what_the_lower_ones_may_and_workers_only_enrol() {
        use Role::*;
        let cases = [
            (Viewer, Viewer, true),
            (Viewer, Artist, false),
            (Artist, Viewer, true),
            (Artist, Operator, false),
            (Operator, Artist, true),
            (Operator, Admin, false),
            (Admin, Operator, true),
            (Admin, Viewer, true),
            (Admin, Worker, false),
            (Worker, Worker, true),
            (Worker, Viewer, false),
            (Operator, Worker, false),
        ];
        for (have, need, granted) in cases {
            assert_eq!(have.grants(need), granted, "{have:?} for {need:?}");
        }
    }

    #[test]
    fn role_names_read_back() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn a_secret_is_stored_only_as_its_hash_and_matches_only_itself() {
        let token = plan_token("alice", Role::Artist, None, Uuid::nil(), [7; 32], at(0)).unwrap();
        assert!(token.secret.starts_with(SECRET_PREFIX));
        assert_eq!(token.secret.len(), SECRET_PREFIX.len() + 64);
        assert_ne!(token.token.hash, token.secret);
        assert!(!token
            .token
            .hash
            .contains(&token.secret[SECRET_PREFIX.len()..]));
        assert!(secret_matches(&token.secret, &token.token.hash));
        let other = secret_from([8; 32]);
        assert!(!secret_matches(&other, &token.token.hash));
        // The SHA-256 of "abc", a published test vector.
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn expired_and_revoked_tokens_are_refused_from_their_moment_on() {
        let mut token = plan_token(
            "ci",
            Role::Viewer,
            Some(Duration::seconds(60)),
            Uuid::nil(),
            [1; 32],
            at(0),
        )
        .unwrap()
        .token;
        assert_eq!(token.usable_at(at(59)), Ok(()));
        assert_eq!(token.usable_at(at(60)), Err(TokenRefusal::Expired));
        token.revoked_at = Some(at(10));
        assert_eq!(token.usable_at(at(9)), Ok(()));
        assert_eq!(token.usable_at(at(10)), Err(TokenRefusal::Revoked));
    }

    #[test]
    fn names_and_lifetimes_are_checked() {
        let plan = |name: &str, days: Option<i64>| {
            plan_token(
                name,
                Role::Viewer,
                days.map(Duration::days),
                Uuid::nil(),
                [0; 32],
                at(0),
            )
        };
        assert!(plan("", None).is_err());
        assert!(plan("ok", Some(0)).is_err());
        assert!(plan("ok", Some(-1)).is_err());
        assert!(plan("ok", Some(100_000)).is_err());
        assert_eq!(
            plan("ok", Some(90)).unwrap().token.expires_at,
            Some(at(0) + Duration::days(90))
        );
    }
}
