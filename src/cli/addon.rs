//! `renderfarm addon --out renderfarm.zip`: the Blender add-on, embedded in
//! the binary, written as the zip Blender installs.
//!
//! One zip serves both Blender lines: its files sit in one folder,
//! `renderfarm_addon/`, which Blender 3.4+ installs as a legacy add-on
//! (`bl_info`, Preferences > Add-ons > Install) and Blender 4.2+ as an
//! extension (`blender_manifest.toml`, Install from Disk: an extension's
//! files may sit in one folder inside the archive).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::files::zip::{stream, ZipEntry};

/// The folder the add-on's files sit in inside the zip: the module name
/// Blender gives a legacy add-on.
pub const FOLDER: &str = "renderfarm_addon";

/// The add-on's files, by their name in its folder.
pub const FILES: &[(&str, &[u8])] = &[
    (
        "__init__.py",
        include_bytes!("../../blender/renderfarm_addon/__init__.py"),
    ),
    (
        "broker.py",
        include_bytes!("../../blender/renderfarm_addon/broker.py"),
    ),
    (
        "jobs.py",
        include_bytes!("../../blender/renderfarm_addon/jobs.py"),
    ),
    (
        "pack.py",
        include_bytes!("../../blender/renderfarm_addon/pack.py"),
    ),
    (
        "blender_manifest.toml",
        include_bytes!("../../blender/renderfarm_addon/blender_manifest.toml"),
    ),
];

#[derive(Debug, Args)]
pub struct AddonArgs {
    /// Where to write the zip (Blender: Preferences > Add-ons > Install…,
    /// or in 4.2+ Get Extensions > Install from Disk…).
    #[arg(long, value_name = "FILE", default_value = "renderfarm.zip")]
    out: PathBuf,
}

/// The zip's bytes.
pub async fn zip_bytes() -> anyhow::Result<Vec<u8>> {
    let modified = chrono::Utc::now();
    let entries = FILES
        .iter()
        .map(|(name, data)| {
            let data: &'static [u8] = data;
            ZipEntry {
                name: format!("{FOLDER}/{name}"),
                bytes: data.len() as u64,
                modified,
                open: Box::new(move || {
                    Box::pin(async move {
                        let piece = Ok(bytes::Bytes::from_static(data));
                        Ok(Box::pin(futures::stream::iter([piece])) as crate::files::ByteStream)
                    })
                }),
            }
        })
        .collect();
    Ok(crate::files::collect_bytes(stream(entries)).await?)
}

/// Writes the zip where `--out` says.
pub async fn addon(args: AddonArgs) -> anyhow::Result<()> {
    let zip = zip_bytes().await?;
    std::fs::write(&args.out, &zip).with_context(|| {
        format!(
            "writing {}; give --out a path in a folder you can write to",
            args.out.display()
        )
    })?;
    println!(
        "wrote the Blender add-on to {} ({} bytes): in Blender 3.4 to 4.1, Edit > Preferences > Add-ons > Install…; in 4.2 or later, Edit > Preferences > Get Extensions > Install from Disk…; then set the broker URL and your artist token in its preferences",
        args.out.display(),
        zip.len()
    );
    Ok(())
}
