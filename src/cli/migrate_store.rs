//! `renderfarm migrate-store`: copies a farm from the embedded store into
//! MongoDB, so a studio that started with `up` on one machine keeps its
//! renders, logs, history and workers when it moves to a cluster.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::startup::StoreChoice;
use crate::store::mongodb::MongoStore;
use crate::store::snapshot::{copy_farm, ImportFarm};
use crate::store::sqlite::{SqliteStore, DB_FILE};

#[derive(Debug, Args)]
pub struct MigrateStoreArgs {
    /// The data directory of the embedded store to copy from (stop its
    /// broker first: changes made during the copy are not carried over).
    #[arg(long)]
    from: PathBuf,
    /// The MongoDB to copy into: a mongodb:// or mongodb+srv:// URI, with the
    /// database in its path (default "renderfarm").
    #[arg(long)]
    to: String,
    /// Copy into a database that already holds renders or workers: those it
    /// holds are left alone and the rest is added (e.g. to finish a copy that
    /// was interrupted).
    #[arg(long)]
    into_non_empty: bool,
}

pub async fn migrate_store(args: MigrateStoreArgs) -> anyhow::Result<()> {
    let StoreChoice::MongoDb(uri) = StoreChoice::parse(Some(&args.to))? else {
        anyhow::bail!(
            "--to {:?} is not a MongoDB URI: give mongodb://HOST:PORT/DATABASE (the embedded store is what --from names)",
            args.to
        );
    };
    let file = args.from.join(DB_FILE);
    if !file.is_file() {
        anyhow::bail!(
            "{} holds no embedded store (no {DB_FILE}): give --from the --data-dir its broker used",
            args.from.display()
        );
    }
    let from_dir = args.from.clone();
    let source = tokio::task::spawn_blocking(move || SqliteStore::open(&from_dir))
        .await?
        .with_context(|| format!("opening the embedded store in {}", args.from.display()))?;
    let target = MongoStore::connect(&uri, None)
        .await
        .context("connecting to MongoDB (is it running, and is the URI right?)")?;
    target
        .migrate()
        .await
        .context("bringing MongoDB's schema up to date")?;
    if !args.into_non_empty && target.holds_anything().await? {
        anyhow::bail!(
            "MongoDB at {} already holds renders or workers: copy into an empty database, or pass --into-non-empty to add what it lacks (what it holds is left alone)",
            target.target()
        );
    }
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} renders")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("copying");
    let report = copy_farm(&source, &target, |_, total| {
        bar.set_length(total as u64);
        bar.inc(1);
    })
    .await
    .context("copying the farm (run the same command with --into-non-empty to finish it)")?;
    bar.finish_and_clear();
    println!(
        "copied {} renders ({} tasks) and {} workers from {} into MongoDB at {}",
        report.renders_copied,
        report.tasks_copied,
        report.workers_copied,
        file.display(),
        target.target()
    );
    println!(
        "copied {} tokens (their hashes), {} already there",
        report.tokens_copied, report.tokens_already_there
    );
    if report.renders_already_there + report.workers_already_there > 0 {
        println!(
            "left alone, already there: {} renders, {} workers",
            report.renders_already_there, report.workers_already_there
        );
    }
    Ok(())
}
