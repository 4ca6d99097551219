//! Files that travel through the broker (issue 13): what names a stored
//! file, what a frame's file may be called, when an upload may be taken
//! (size limit, quota, resume offset), when a task's frames are all stored,
//! and when an unreferenced file may be collected. Pure: the file storage
//! and the handlers ask these, never restate them.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Duration, Utc};

use super::ValidationError;

/// The longest frame file name taken, in bytes (what most file systems hold).
pub const MAX_FRAME_NAME_LEN: usize = 255;

/// The default of `--max-file-size`: 50 GiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 50 * 1024 * 1024 * 1024;

/// The default of `--file-grace`: unreferenced files and partial uploads
/// live a day, so that a submit that uploads first and submits later, or an
/// upload resumed the next morning, does not lose its file.
pub const DEFAULT_FILE_GRACE: Duration = Duration::hours(24);

/// A SHA-256 as the broker names files with: 64 lowercase hex digits. The
/// only way to one is [`Sha256::parse`], so a path built from it cannot
/// leave the storage directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(String);

impl Sha256 {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValidationError> {
        let ok = raw.len() == 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(raw.to_string()))
        } else {
            let shown: String = raw.chars().take(80).collect();
            Err(ValidationError::new(
                field,
                format!(
                    "{shown:?} is not a SHA-256; give the file's SHA-256 as 64 lowercase hex digits (what `sha256sum` prints)"
                ),
            ))
        }
    }

    /// From a digest computed by the broker itself.
    pub fn from_digest(digest: &[u8]) -> Self {
        Self(hex::encode(digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name a render shows when the submitter gave none.
    pub fn default_blend_name(&self) -> String {
        format!("{}.blend", &self.0[..12])
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the name a worker gives a frame's file: a plain file name, so
/// that an archive entry or a downloaded file named by it lands where the
/// downloader meant (no directory, no traversal, nothing a terminal or a
/// file system would take badly).
pub fn validate_frame_name(raw: &str) -> Result<String, ValidationError> {
    let refuse = |why: &str| {
        let shown: String = raw.chars().take(80).collect();
        Err(ValidationError::new(
            "name",
            format!("{shown:?} {why}; give the frame's plain file name, such as frame_0001.png"),
        ))
    };
    if raw.is_empty() {
        return refuse("is empty");
    }
    if raw.len() > MAX_FRAME_NAME_LEN {
        return refuse(&format!(
            "is {} bytes long, over {MAX_FRAME_NAME_LEN}",
            raw.len()
        ));
    }
    if raw.contains('/') || raw.contains('\\') {
        return refuse("contains a directory separator");
    }
    if raw == "." || raw == ".." || raw.contains("..") {
        return refuse("contains \"..\"");
    }
    if raw.chars().any(char::is_control) {
        return refuse("contains control characters");
    }
    // A drive letter (`C:x.png`) or an alternate data stream on Windows.
    if raw.contains(':') {
        return refuse("contains \":\"");
    }
    if raw.trim() != raw {
        return refuse("starts or ends with spaces");
    }
    Ok(raw.to_string())
}

/// Whether the render uploads its frames when the submitter did not say:
/// an uploaded blend means there is no shared drive to write them to.
pub fn upload_frames_by_default(asked: Option<bool>, blend_uploaded: bool) -> bool {
    asked.unwrap_or(blend_uploaded)
}

/// Why an upload is refused before any byte of it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadRefusal {
    /// Over `--max-file-size` (413).
    TooLarge { declared: u64, limit: u64 },
    /// It would take the storage past `--storage-quota` (507).
    QuotaExceeded { needed: u64, used: u64, quota: u64 },
}

impl fmt::Display for UploadRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadRefusal::TooLarge { declared, limit } => write!(
                f,
                "the file is {declared} bytes ({}), over this broker's limit of {limit} bytes ({}); the broker's operator can raise it with --max-file-size (RENDERFARM_MAX_FILE_SIZE)",
                human_bytes(*declared),
                human_bytes(*limit)
            ),
            UploadRefusal::QuotaExceeded {
                needed,
                used,
                quota,
            } => write!(
                f,
                "the broker's file storage is full: storing {needed} more bytes ({}) would pass its quota of {quota} bytes ({}; {} in use); nothing was stored. Delete finished renders to free their frames, or ask the broker's operator to raise --storage-quota (RENDERFARM_STORAGE_QUOTA)",
                human_bytes(*needed),
                human_bytes(*quota),
                human_bytes(*used)
            ),
        }
    }
}

/// The storage's limits, from the broker's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    pub max_file_size: u64,
    /// `None`: no quota (the disk's own size is the bound).
    pub quota: Option<u64>,
}

impl Default for StorageLimits {
    fn default() -> Self {
        Self {
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            quota: None,
        }
    }
}

impl StorageLimits {
    /// Whether a file of `declared` bytes may be uploaded at all.
    pub fn check_size(&self, declared: u64) -> Result<(), UploadRefusal> {
        if declared > self.max_file_size {
            Err(UploadRefusal::TooLarge {
                declared,
                limit: self.max_file_size,
            })
        } else {
            Ok(())
        }
    }

    /// Whether `more` bytes may be written when `used` are (complete files
    /// and partial uploads both count: a partial takes its disk too).
    pub fn check_room(&self, used: u64, more: u64) -> Result<(), UploadRefusal> {
        match self.quota {
            Some(quota) if used.saturating_add(more) > quota => Err(UploadRefusal::QuotaExceeded {
                needed: more,
                used,
                quota,
            }),
            _ => Ok(()),
        }
    }
}

/// A part of a file: `Content-Range: bytes START-END/TOTAL` (END inclusive),
/// or the whole body when the header is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadPart {
    pub start: u64,
    /// Bytes in this part.
    pub len: u64,
    /// The whole file's declared size.
    pub total: u64,
}

impl UploadPart {
    pub fn whole(total: u64) -> Self {
        Self {
            start: 0,
            len: total,
            total,
        }
    }

    /// Parses a `Content-Range` header of a `PUT`.
    pub fn parse_content_range(raw: &str) -> Result<Self, ValidationError> {
        let refuse = || {
            Err(ValidationError::new(
                "Content-Range",
                format!(
                    "{raw:?} is not a range of the file; send `bytes START-END/TOTAL` (END inclusive, TOTAL the whole file's size), or no Content-Range for the whole file"
                ),
            ))
        };
        let Some(rest) = raw.trim().strip_prefix("bytes ") else {
            return refuse();
        };
        let Some((range, total)) = rest.split_once('/') else {
            return refuse();
        };
        let Some((start, end)) = range.split_once('-') else {
            return refuse();
        };
        let (Ok(start), Ok(end), Ok(total)) = (
            start.trim().parse::<u64>(),
            end.trim().parse::<u64>(),
            total.trim().parse::<u64>(),
        ) else {
            return refuse();
        };
        if end < start || end >= total {
            return refuse();
        }
        Ok(Self {
            start,
            len: end - start + 1,
            total,
        })
    }

    /// Whether the part may be appended to what is held for the file
    /// (`held` bytes of a file declared `held_total`, if any is held): it
    /// must start exactly where those end, and declare the same size.
    pub fn check_resume(&self, held: Option<(u64, u64)>) -> Result<(), ResumeRefusal> {
        let (received, total) = held.unwrap_or((0, self.total));
        if total != self.total {
            return Err(ResumeRefusal::OtherTotal {
                held_total: total,
                received,
            });
        }
        if self.start != received {
            return Err(ResumeRefusal::WrongOffset { received });
        }
        Ok(())
    }

    /// Whether the file is complete once this part is in.
    pub fn finishes(&self) -> bool {
        self.start + self.len == self.total
    }
}

/// Why a part cannot be appended (409, with the offset to resume from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRefusal {
    WrongOffset { received: u64 },
    OtherTotal { held_total: u64, received: u64 },
}

impl ResumeRefusal {
    /// The offset the client should send from.
    pub fn received(&self) -> u64 {
        match self {
            ResumeRefusal::WrongOffset { received }
            | ResumeRefusal::OtherTotal { received, .. } => *received,
        }
    }
}

impl fmt::Display for ResumeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResumeRefusal::WrongOffset { received } => write!(
                f,
                "the broker holds {received} bytes of this file; send the part starting at byte {received} (see the Upload-Offset header, or HEAD /files/{{sha256}})"
            ),
            ResumeRefusal::OtherTotal {
                held_total,
                received,
            } => write!(
                f,
                "an upload of this file declaring {held_total} bytes in total is under way ({received} bytes held); a file's size follows from its hash, so resume with the same total"
            ),
        }
    }
}

/// What a whole upload turned out to be, against what was declared.
pub fn check_upload(
    declared: &Sha256,
    declared_bytes: u64,
    actual: &Sha256,
    actual_bytes: u64,
) -> Result<(), ValidationError> {
    if actual_bytes != declared_bytes {
        return Err(ValidationError::new(
            "body",
            format!(
                "{actual_bytes} bytes arrived where {declared_bytes} were declared; nothing was stored. Send the whole file again"
            ),
        ));
    }
    if actual != declared {
        return Err(ValidationError::new(
            "sha256",
            format!(
                "the bytes received hash to {actual}, not to {declared} as declared; nothing was stored. Check the file did not change while it was sent, and send it again"
            ),
        ));
    }
    Ok(())
}

/// Whether a worker may upload `frame` for a task of frames `start..=end`.
pub fn check_frame_in_task(frame: i64, start: i64, end: i64) -> Result<(), ValidationError> {
    if (start..=end).contains(&frame) {
        Ok(())
    } else {
        Err(ValidationError::new(
            "frame",
            format!("frame {frame} is not one of this task's frames ({start} to {end}); upload only the frames of the task you were given"),
        ))
    }
}

/// The frames of `start..=end` not in `stored`, lowest first: a task of a
/// render that uploads its frames completes only when this is empty.
pub fn missing_frames(start: i64, end: i64, stored: &BTreeSet<i64>) -> Vec<i64> {
    (start..=end).filter(|f| !stored.contains(f)).collect()
}

/// The message refusing to complete a task with frames missing.
pub fn missing_frames_message(task_id: impl fmt::Display, missing: &[i64]) -> String {
    const SHOWN: usize = 20;
    let mut list: Vec<String> = missing.iter().take(SHOWN).map(i64::to_string).collect();
    if missing.len() > SHOWN {
        list.push(format!("and {} more", missing.len() - SHOWN));
    }
    format!(
        "task {task_id} cannot complete: its render stores frames at the broker and {} of its frames are not uploaded yet ({}); upload them first with PUT /tasks/{task_id}/frames/{{frame}}, then complete it",
        missing.len(),
        list.join(", ")
    )
}

/// Whether an unreferenced file (or a partial upload) last written at
/// `written_at` may be collected at `now`.
pub fn collectable(written_at: DateTime<Utc>, now: DateTime<Utc>, grace: Duration) -> bool {
    written_at + grace <= now
}

/// Parses a size as the flags take it: `500`, `10MB`, `2.5GiB`, `1T`
/// (decimal units for `kB`/`MB`/`GB`/`TB`, binary for `KiB`/`MiB`/`GiB`/
/// `TiB` and the bare letters `K`/`M`/`G`/`T`).
pub fn parse_byte_size(raw: &str) -> Result<u64, String> {
    let s = raw.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim();
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{raw:?}: give a size such as 500MB, 20GiB or 1T (a number of bytes, or with a unit B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?}: give a size such as 500MB, 20GiB or 1T"))?;
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{raw:?} is not a size this broker can hold"));
    }
    Ok(bytes as u64)
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn only_64_lowercase_hex_digits_name_a_file() {
        assert_eq!(Sha256::parse("sha256", HASH).unwrap().as_str(), HASH);
        for bad in [
            "",
            &HASH[..63],
            &format!("{HASH}0"),
            &HASH.to_uppercase(),
            &format!("../{}", &HASH[3..]),
            &format!("{}g", &HASH[..63]),
            &format!("{}/", &HASH[..63]),
        ] {
            let err = Sha256::parse("sha256", bad).unwrap_err();
            assert_eq!(err.field, "sha256");
            assert!(err.message.contains("64 lowercase hex digits"), "{err}");
        }
        assert_eq!(
            Sha256::parse("x", HASH).unwrap().default_blend_name(),
            "9f86d081884c.blend"
        );
    }

    #[test]
    fn frame_names_are_plain_file_names() {
        for good in ["frame_0001.png", "shot 10 #1.exr", "a.b.c.tif", "ü.png"] {
            assert_eq!(validate_frame_name(good).unwrap(), good);
        }
        let long = "x".repeat(MAX_FRAME_NAME_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b.png",
            "a\\b.png",
            "..\\x.png",
            "x..png",
            "C:x.png",
            "a\nb.png",
            "a\0b.png",
            " lead.png",
            long.as_str(),
        ] {
            let err = validate_frame_name(bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad:?}");
            assert!(err.message.contains("plain file name"), "{err}");
        }
    }

    #[test]
    fn frames_are_uploaded_by_default_only_with_an_uploaded_blend() {
        let table = [
            (None, true, true),
            (None, false, false),
            (Some(false), true, false),
            (Some(true), false, true),
        ];
        for (asked, uploaded, want) in table {
            assert_eq!(upload_frames_by_default(asked, uploaded), want);
        }
    }

    #[test]
    fn limits_refuse_big_files_and_a_full_store_naming_the_flag() {
        let limits = StorageLimits {
            max_file_size: 100,
            quota: Some(1000),
        };
        assert!(limits.check_size(100).is_ok());
        let big = limits.check_size(101).unwrap_err();
        assert!(big.to_string().contains("--max-file-size"), "{big}");
        assert!(big.to_string().contains("100 bytes"), "{big}");
        assert!(limits.check_room(900, 100).is_ok());
        let full = limits.check_room(901, 100).unwrap_err();
        assert!(full.to_string().contains("--storage-quota"), "{full}");
        assert!(StorageLimits::default().check_room(u64::MAX, 1).is_ok());
    }

    #[test]
    fn content_ranges_parse_and_resume_only_where_the_held_bytes_end() {
        let part = UploadPart::parse_content_range("bytes 10-19/30").unwrap();
        assert_eq!(
            part,
            UploadPart {
                start: 10,
                len: 10,
                total: 30
            }
        );
        assert!(!part.finishes());
        assert!(UploadPart::parse_content_range("bytes 20-29/30")
            .unwrap()
            .finishes());
        for bad in [
            "10-19/30",
            "bytes 19-10/30",
            "bytes 10-30/30",
            "bytes */30",
            "bytes 1-2",
            "bytes -1-2/3",
            "items 0-1/2",
        ] {
            assert!(UploadPart::parse_content_range(bad).is_err(), "{bad}");
        }
        assert_eq!(part.check_resume(Some((10, 30))), Ok(()));
        assert_eq!(
            part.check_resume(Some((5, 30))),
            Err(ResumeRefusal::WrongOffset { received: 5 })
        );
        assert_eq!(
            part.check_resume(None),
            Err(ResumeRefusal::WrongOffset { received: 0 })
        );
        assert_eq!(
            part.check_resume(Some((10, 31))).unwrap_err().received(),
            10
        );
        assert_eq!(UploadPart::whole(5).check_resume(None), Ok(()));
    }

    #[test]
    fn an_upload_must_match_its_declared_hash_and_size() {
        let want = Sha256::parse("sha256", HASH).unwrap();
        let other = Sha256::from_digest(&[0u8; 32]);
        assert!(check_upload(&want, 4, &want, 4).is_ok());
        assert_eq!(check_upload(&want, 4, &want, 3).unwrap_err().field, "body");
        assert_eq!(
            check_upload(&want, 4, &other, 4).unwrap_err().field,
            "sha256"
        );
    }

    #[test]
    fn a_task_misses_every_frame_of_its_range_not_stored() {
        let stored: BTreeSet<i64> = [1, 3, 7].into();
        assert_eq!(missing_frames(1, 4, &stored), vec![2, 4]);
        assert!(missing_frames(3, 3, &stored).is_empty());
        let many: Vec<i64> = (1..=30).collect();
        let message = missing_frames_message("t", &many);
        assert!(message.contains("30 of its frames"), "{message}");
        assert!(message.contains("and 10 more"), "{message}");
        assert!(message.contains("upload them first"), "{message}");
    }

    #[test]
    fn a_task_takes_only_its_own_frames() {
        assert!(check_frame_in_task(5, 5, 9).is_ok());
        assert!(check_frame_in_task(9, 5, 9).is_ok());
        assert_eq!(check_frame_in_task(4, 5, 9).unwrap_err().field, "frame");
        assert!(check_frame_in_task(10, 5, 9).is_err());
    }

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        for (raw, want) in [
            ("500", 500),
            ("10MB", 10_000_000),
            ("2GiB", 2 << 30),
            ("50GiB", DEFAULT_MAX_FILE_SIZE),
            ("1.5k", 1536),
            (" 3 T ", 3 << 40),
        ] {
            assert_eq!(parse_byte_size(raw), Ok(want), "{raw}");
        }
        for bad in ["", "x", "10 parsecs", "-1", "1e400GB"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_are_collected_only_after_the_grace() {
        let t0 = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let grace = Duration::hours(1);
        assert!(!collectable(t0, t0 + Duration::minutes(59), grace));
        assert!(collectable(t0, t0 + grace, grace));
    }
}
