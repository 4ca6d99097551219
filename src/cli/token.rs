//! `renderfarm token`: credentials, made and revoked with direct access to
//! the store (`--data-dir` or `--store`), no HTTP. This is also how an admin
//! who lost every admin token gets one back: on the broker's own machine.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Subcommand};
use uuid::Uuid;

use crate::domain::{plan_token, Role, TokenRefusal};
use crate::startup::StoreChoice;
use crate::store::mongodb::MongoStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    /// Where the embedded store lives (when no MongoDB URI is given).
    #[arg(
        long,
        env = "RENDERFARM_DATA_DIR",
        default_value = "renderfarm-data",
        global = true
    )]
    data_dir: PathBuf,
    /// The store: leave out for the embedded SQLite store, or a mongodb:// URI.
    #[arg(long, env = "MONGODB_URI", global = true)]
    store: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token; its secret is printed once, on stdout, and never stored.
    Create {
        /// Who or what holds it (e.g. a person, a pipeline).
        #[arg(long)]
        name: String,
        /// viewer, artist, operator, admin, or worker (enrols render machines).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// How long it is good for (e.g. 90d, 12h); it does not expire when left out.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token from now on.
    Revoke {
        /// The token's id, as `token list` shows it.
        id: Uuid,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("{s:?} is not a role: use one of {}", names.join(", "))
    })
}

async fn open_store(args: &TokenArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match StoreChoice::parse(args.store.as_deref())? {
        StoreChoice::Embedded => {
            let dir = args.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open_beside_broker(&dir))
                .await?
                .with_context(|| {
                    format!("opening the embedded store in {}", args.data_dir.display())
                })?;
            Arc::new(store)
        }
        StoreChoice::MongoDb(uri) => {
            let store = MongoStore::connect(&uri, None)
                .await
                .context("connecting to MongoDB (is it running, and is the URI right?)")?;
            store.migrate().await?;
            Arc::new(store)
        }
    })
}

pub async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let store = open_store(&args).await?;
    let now = Utc::now();
    match args.command {
        TokenCommand::Create {
            name,
            role,
            expires,
        } => {
            let lifetime = expires
                .map(chrono::Duration::from_std)
                .transpose()
                .context("--expires is too long: use at most 10 years")?;
            let mut random = [0u8; 32];
            getrandom::fill(&mut random)
                .map_err(|e| anyhow::anyhow!("no randomness from the OS for the secret: {e}"))?;
            let new = plan_token(&name, role, lifetime, Uuid::now_v7(), random, now)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let token = store.create_token(new.token).await?;
            let until = token
                .expires_at
                .map_or("does not expire".to_string(), |at| {
                    format!("expires {}", at.to_rfc3339())
                });
            eprintln!(
                "token {} for {:?}, role {}, {until}; its secret follows, shown this once:",
                token.id,
                token.name,
                token.role.as_str()
            );
            println!("{}", new.secret);
        }
        TokenCommand::List => {
            let tokens = store.list_tokens().await?;
            if tokens.is_empty() {
                println!("no tokens yet: renderfarm token create --name NAME --role ROLE");
            }
            for t in tokens {
                let state = match t.usable_at(now) {
                    Ok(()) => "usable",
                    Err(TokenRefusal::Expired) => "expired",
                    Err(TokenRefusal::Revoked) => "revoked",
                };
                let until = t
                    .expires_at
                    .map_or("never".to_string(), |at| at.to_rfc3339());
                println!(
                    "{}  {:<9} {:<24} expires {:<32} {}",
                    t.id,
                    t.role.as_str(),
                    t.name,
                    until,
                    state
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let token = store.revoke_token(id, now).await?;
            println!(
                "token {} ({:?}, {}) is revoked",
                token.id,
                token.name,
                token.role.as_str()
            );
        }
    }
    Ok(())
}
