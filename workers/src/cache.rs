//! The agent's cache of blend files fetched from the broker by hash, under
//! `<work-dir>/cache/<sha256>.blend`: bounded in size (least recently used
//! goes first, never a file a chunk is rendering from), each file checked
//! against its hash before a render uses it, so that one download serves
//! every chunk of a render and a damaged file is fetched again. One cache
//! serves every slot of an agent (`--gpus`) at once: two slots that want the
//! same blend take turns, so that one download serves both.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context;
use renderfarm_client::{is_sha256, sha256_file};

/// The folder of the cache, in the work directory.
pub const CACHE_DIR: &str = "cache";
/// `--cache-size` when not given: 20 GiB.
pub const DEFAULT_CACHE_SIZE: u64 = 20 << 30;

/// A size as a person writes it: `20GiB`, `500MB`, `1.5G`, `4096` (bytes).
/// K, M, G, T are powers of 1024 with or without `iB`; `KB`, `MB`, … powers
/// of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let help = || format!("{text:?} is not a size: write e.g. 20GiB, 500MB or 1073741824 (bytes)");
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| help())?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(help()),
    };
    let bytes = number * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(help());
    }
    Ok(bytes as u64)
}

/// How a blend came to be in the cache for this use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// It was there, and its bytes still have its hash.
    Cached,
    /// It was fetched now (absent, or damaged and removed).
    Downloaded,
}

/// Blend files by hash, bounded to `limit` bytes.
#[derive(Debug)]
pub struct BlendCache {
    dir: PathBuf,
    limit: u64,
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// Hashes that chunks are rendering from, with how many.
    in_use: HashMap<String, usize>,
    /// Files this process checked, with the size and modification time they
    /// had then: a file changed since is hashed again, an unchanged one is
    /// not (a blend of several GB takes seconds to hash, once per chunk).
    verified: HashMap<String, (u64, SystemTime)>,
    /// Per hash, the turn to check or fetch it, while any caller holds or
    /// waits for it: two fetches of one hash would write the same partial
    /// download at once (each resuming from the other's bytes).
    turns: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// A caller's turn to check or fetch one hash; the last one out forgets
/// the turn.
struct Turn<'a> {
    cache: &'a BlendCache,
    sha256: String,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        // The map's reference and this turn's own: nobody else waits. A
        // caller gets its reference under the same lock, so none can come
        // between the count and the removal.
        if state
            .turns
            .get(&self.sha256)
            .is_some_and(|gate| Arc::strong_count(gate) == 2)
        {
            state.turns.remove(&self.sha256);
        }
    }
}

/// A blend in the cache that a chunk renders from; it is not evicted while
/// this lives.
#[derive(Debug)]
pub struct CachedBlend {
    cache: Arc<BlendCache>,
    sha256: String,
    path: PathBuf,
}

impl CachedBlend {
    /// The file Blender opens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CachedBlend {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        if let Some(count) = state.in_use.get_mut(&self.sha256) {
            *count -= 1;
            if *count == 0 {
                state.in_use.remove(&self.sha256);
            }
        }
    }
}

/// One file in the cache's folder: a blend or a download in progress.
struct Entry {
    path: PathBuf,
    sha256: String,
    bytes: u64,
    used: SystemTime,
}

impl BlendCache {
    /// The cache in `dir` (made if missing), holding at most `limit` bytes
    /// except while one blend alone is larger.
    pub fn open(dir: &Path, limit: u64) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the blend cache {}", dir.display()))?;
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            limit,
            state: Mutex::new(CacheState::default()),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // A panic elsewhere while holding it leaves maps that are still
        // consistent (each change is one insert or remove).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the turn to check or fetch `sha256`.
    async fn turn(&self, sha256: &str) -> Turn<'_> {
        let gate = self
            .lock()
            .turns
            .entry(sha256.to_string())
            .or_default()
            .clone();
        Turn {
            cache: self,
            sha256: sha256.to_string(),
            _held: gate.lock_owned().await,
        }
    }

    /// Where the blend of `sha256` lives.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.blend"))
    }

    /// The blend of `sha256`, from the cache when it is there with the right
    /// bytes, else through `download(path)`, which writes it there verified
    /// (`bytes`: its size, when known, to make room first). Least recently
    /// used files go to stay under the limit; none in use does. A second
    /// caller for the same hash waits for the first's download and uses it.
    pub async fn get<F, Fut>(
        self: &Arc<Self>,
        sha256: &str,
        bytes: Option<u64>,
        download: F,
    ) -> anyhow::Result<(CachedBlend, Provenance)>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        if !is_sha256(sha256) {
            anyhow::bail!("{sha256:?} is not a SHA-256 (64 lowercase hex digits)");
        }
        let path = self.path_of(sha256);
        *self.lock().in_use.entry(sha256.to_string()).or_default() += 1;
        let blend = CachedBlend {
            cache: self.clone(),
            sha256: sha256.to_string(),
            path: path.clone(),
        };
        let _turn = self.turn(sha256).await;
        if path.is_file() {
            if self.check(sha256, &path).await? {
                self.mark_used(sha256, &path)?;
                return Ok((blend, Provenance::Cached));
            }
            tracing::warn!(path = %path.display(), "a cached blend no longer has its hash (damaged on disk); fetching it again");
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the damaged {}", path.display()))?;
        }
        self.evict(bytes.unwrap_or(0));
        download(path.clone()).await?;
        self.mark_used(sha256, &path)?;
        self.evict(0);
        Ok((blend, Provenance::Downloaded))
    }

    /// True when the file at `path` has the hash `sha256` (without reading
    /// it again when this process checked it and it has not changed since).
    async fn check(&self, sha256: &str, path: &Path) -> anyhow::Result<bool> {
        let stamp = stamp(path)?;
        if self.lock().verified.get(sha256) == Some(&stamp) {
            return Ok(true);
        }
        let actual = sha256_file(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(actual == sha256)
    }

    /// Makes `path` the most recently used (its modification time, so the
    /// order survives a restart) and remembers it as checked.
    fn mark_used(&self, sha256: &str, path: &Path) -> anyhow::Result<()> {
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .with_context(|| format!("touching {}", path.display()))?;
        let stamp = stamp(path)?;
        self.lock().verified.insert(sha256.to_string(), stamp);
        Ok(())
    }

    /// Removes the least recently used files not in use until the cache and
    /// `incoming` more bytes fit under the limit (or nothing more can go).
    fn evict(&self, incoming: u64) {
        let mut entries = self.entries();
        entries.sort_by_key(|e| e.used);
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let mut state = self.lock();
        for entry in entries {
            if total.saturating_add(incoming) <= self.limit {
                break;
            }
            if state.in_use.contains_key(&entry.sha256) {
                continue;
            }
            match std::fs::remove_file(&entry.path) {
                Ok(()) => {
                    tracing::info!(path = %entry.path.display(), bytes = entry.bytes, "evicted from the blend cache (--cache-size)");
                    total -= entry.bytes;
                    state.verified.remove(&entry.sha256);
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path.display(), error = %e, "could not evict from the blend cache")
                }
            }
        }
        if total.saturating_add(incoming) > self.limit {
            tracing::warn!(
                limit = self.limit,
                needed = total.saturating_add(incoming),
                "the blends in use are larger than --cache-size; raise it"
            );
        }
    }

    /// The files in the cache's folder: blends and partial downloads.
    fn entries(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let sha256 = name.split('.').next()?.to_string();
                let metadata = e.metadata().ok()?;
                metadata.is_file().then(|| Entry {
                    path: e.path(),
                    sha256,
                    bytes: metadata.len(),
                    used: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect()
    }
}

fn stamp(path: &Path) -> anyhow::Result<(u64, SystemTime)> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((
        metadata.len(),
        metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A blend of `len` bytes of `fill`, and its hash.
    async fn blend(dir: &Path, fill: u8, len: usize) -> (Vec<u8>, String) {
        let bytes = vec![fill; len];
        let path = dir.join("source");
        std::fs::write(&path, &bytes).unwrap();
        let sha = sha256_file(&path).await.unwrap();
        (bytes, sha)
    }

    /// Gets `sha` from the cache, "downloading" `bytes` when asked to;
    /// counts the downloads.
    async fn get(
        cache: &Arc<BlendCache>,
        sha: &str,
        bytes: &[u8],
        downloads: &AtomicUsize,
    ) -> (CachedBlend, Provenance) {
        cache
            .get(sha, Some(bytes.len() as u64), |path| async move {
                downloads.fetch_add(1, Ordering::SeqCst);
                std::fs::write(path, bytes)?;
                Ok(())
            })
            .await
            .unwrap()
    }

    fn cached(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn one_download_serves_every_use_and_the_least_recently_used_goes_first() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = BlendCache::open(dir.path(), 250).unwrap();
        let downloads = AtomicUsize::new(0);
        let (a, sha_a) = blend(scratch.path(), b'a', 100).await;
        let (b, sha_b) = blend(scratch.path(), b'b', 100).await;
        let (c, sha_c) = blend(scratch.path(), b'c', 100).await;

        for _ in 0..3 {
            let (held, _) = get(&cache, &sha_a, &a, &downloads).await;
            assert_eq!(std::fs::read(held.path()).unwrap(), a);
        }
        assert_eq!(downloads.load(Ordering::SeqCst), 1, "one download, reused");

        let (held, how) = get(&cache, &sha_b, &b, &downloads).await;
        assert_eq!(how, Provenance::Downloaded);
        drop(held);
        // a is used again, so b is now the least recently used.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let (held, how) = get(&cache, &sha_a, &a, &downloads).await;
        assert_eq!(how, Provenance::Cached);
        drop(held);
        let (held, _) = get(&cache, &sha_c, &c, &downloads).await;
        drop(held);
        assert_eq!(
            cached(dir.path()),
            [format!("{sha_a}.blend"), format!("{sha_c}.blend")],
            "b, the least recently used, made room for c"
        );
        assert_eq!(downloads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_blend_in_use_is_never_evicted_even_over_the_limit() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = BlendCache::open(dir.path(), 150).unwrap();
        let downloads = AtomicUsize::new(0);
        let (a, sha_a) = blend(scratch.path(), b'a', 100).await;
        let (b, sha_b) = blend(scratch.path(), b'b', 100).await;
        let (held_a, _) = get(&cache, &sha_a, &a, &downloads).await;
        let (held_b, _) = get(&cache, &sha_b, &b, &downloads).await;
        assert!(held_a.path().is_file(), "in use: kept over the limit");
        assert!(held_b.path().is_file());
        drop(held_a);
        drop(held_b);
        let (c, sha_c) = blend(scratch.path(), b'c', 100).await;
        let (_held_c, _) = get(&cache, &sha_c, &c, &downloads).await;
        assert_eq!(cached(dir.path()), [format!("{sha_c}.blend")]);
    }

    #[tokio::test]
    async fn a_damaged_cached_blend_is_fetched_again() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = BlendCache::open(dir.path(), 1 << 20).unwrap();
        let downloads = AtomicUsize::new(0);
        let (a, sha_a) = blend(scratch.path(), b'a', 100).await;
        drop(get(&cache, &sha_a, &a, &downloads).await);
        // Same size, other bytes: only the hash can tell.
        std::fs::write(cache.path_of(&sha_a), vec![b'x'; 100]).unwrap();
        let (held, how) = get(&cache, &sha_a, &a, &downloads).await;
        assert_eq!(how, Provenance::Downloaded);
        assert_eq!(std::fs::read(held.path()).unwrap(), a);
        assert_eq!(downloads.load(Ordering::SeqCst), 2);

        // A new process (an agent restarted) checks what it finds too.
        drop(held);
        std::fs::write(cache.path_of(&sha_a), b"short").unwrap();
        let fresh = BlendCache::open(dir.path(), 1 << 20).unwrap();
        let (held, how) = get(&fresh, &sha_a, &a, &downloads).await;
        assert_eq!(how, Provenance::Downloaded);
        assert_eq!(std::fs::read(held.path()).unwrap(), a);
    }

    #[tokio::test]
    async fn two_slots_asking_for_one_blend_at_once_share_one_download() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = BlendCache::open(dir.path(), 1 << 20).unwrap();
        let downloads = AtomicUsize::new(0);
        let (a, sha_a) = blend(scratch.path(), b'a', 100).await;
        // The download writes in two parts with a pause between, as a
        // transfer over the network does: the second caller asks meanwhile.
        let fetch = |path: PathBuf| {
            let downloads = &downloads;
            let a = &a;
            async move {
                downloads.fetch_add(1, Ordering::SeqCst);
                let partial = path.with_extension("part");
                std::fs::write(&partial, &a[..50])?;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let mut file = std::fs::OpenOptions::new().append(true).open(&partial)?;
                std::io::Write::write_all(&mut file, &a[50..])?;
                std::fs::rename(&partial, &path)?;
                Ok(())
            }
        };
        let (first, second) = tokio::join!(
            cache.get(&sha_a, Some(100), fetch),
            cache.get(&sha_a, Some(100), fetch)
        );
        let (first, how_first) = first.unwrap();
        let (second, how_second) = second.unwrap();
        assert_eq!(downloads.load(Ordering::SeqCst), 1, "one download");
        assert_eq!(
            [how_first, how_second],
            [Provenance::Downloaded, Provenance::Cached]
        );
        assert_eq!(std::fs::read(first.path()).unwrap(), a);
        assert_eq!(std::fs::read(second.path()).unwrap(), a);
        drop((first, second));
        assert!(cache.lock().turns.is_empty(), "the turns are forgotten");
    }

    #[test]
    fn sizes_are_read_as_people_write_them() {
        for (text, want) in [
            ("20GiB", Ok(20 << 30)),
            ("20G", Ok(20 << 30)),
            ("500MB", Ok(500_000_000)),
            ("1.5K", Ok(1536)),
            ("4096", Ok(4096)),
            (" 2 mib ", Ok(2 << 20)),
        ] {
            assert_eq!(parse_size(text), want, "{text}");
        }
        for text in ["", "GiB", "lots", "5 parsecs", "-1G", "1e400"] {
            let error = parse_size(text).unwrap_err();
            assert!(error.contains("20GiB"), "{text}: {error}");
        }
    }

    #[tokio::test]
    async fn a_hash_that_is_not_one_never_becomes_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlendCache::open(dir.path(), 1 << 20).unwrap();
        let error = cache
            .get("../../etc/passwd", None, |_| async { Ok(()) })
            .await
            .unwrap_err();
        assert!(error.to_string().contains("SHA-256"), "{error}");
    }
}
