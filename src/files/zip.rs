//! A ZIP archive written as a stream (`GET /renders/{id}/frames.zip`):
//! entries stored uncompressed (frames are compressed images already), each
//! read once from its source and sent on as it is read, so the first byte
//! goes out at once and the broker never holds an archive. ZIP64 fields are
//! written only for an entry or an archive past the 4 GiB limits of the
//! classic format.
//!
//! Why not the `zip` crate the lockfile has already: its writer (3.0) needs
//! a seekable output; a stream with data descriptors (APPNOTE 4.3.9) is
//! what lets the archive go out while it is written.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Datelike, Timelike, Utc};
use futures::future::BoxFuture;
use futures::StreamExt;

use super::ByteStream;

/// One file of the archive; `open` is called when its turn comes.
pub struct ZipEntry {
    pub name: String,
    /// Its size as recorded; the bytes actually read are what the archive
    /// records, this only decides whether ZIP64 fields are needed.
    pub bytes: u64,
    pub modified: DateTime<Utc>,
    pub open: Box<dyn FnOnce() -> BoxFuture<'static, io::Result<ByteStream>> + Send>,
}

const LOCAL_HEADER: u32 = 0x0403_4b50;
const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL: u32 = 0x0605_4b50;
const ZIP64_END: u32 = 0x0606_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
/// Sizes are in the data descriptor (bit 3); names are UTF-8 (bit 11).
const FLAGS: u16 = 0x0808;
const STORED: u16 = 0;
const U32_MAX: u64 = 0xFFFF_FFFF;

/// What the central directory needs of a written entry.
struct Written {
    name: String,
    time: u16,
    date: u16,
    crc: u32,
    size: u64,
    offset: u64,
    zip64: bool,
}

fn dos_time(t: DateTime<Utc>) -> (u16, u16) {
    if t.year() < 1980 {
        return (0, (1 << 5) | 1);
    }
    let time = ((t.hour() as u16) << 11) | ((t.minute() as u16) << 5) | (t.second() as u16 / 2);
    let date =
        (((t.year() - 1980).min(127) as u16) << 9) | ((t.month() as u16) << 5) | t.day() as u16;
    (time, date)
}

fn version_needed(zip64: bool) -> u16 {
    if zip64 {
        45
    } else {
        20
    }
}

/// Streams the archive of `entries`, in order. An entry that fails to open
/// or read ends the stream with the error (the client sees a cut archive,
/// never a wrong one).
pub fn stream(entries: Vec<ZipEntry>) -> ByteStream {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    tokio::spawn(async move {
        if let Err(e) = write_all(entries, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// A client that went away ends the writing.
fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the client went away")
}

async fn write_all(
    entries: Vec<ZipEntry>,
    tx: &tokio::sync::mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    let send = |b: Bytes| async move { tx.send(Ok(b)).await.map_err(|_| gone()) };
    let mut offset = 0u64;
    let mut written = Vec::with_capacity(entries.len());
    for entry in entries {
        let zip64 = entry.bytes >= U32_MAX || offset >= U32_MAX;
        let (time, date) = dos_time(entry.modified);
        let name = entry.name.into_bytes();
        let mut header = BytesMut::with_capacity(30 + name.len() + 20);
        header.put_u32_le(LOCAL_HEADER);
        header.put_u16_le(version_needed(zip64));
        header.put_u16_le(FLAGS);
        header.put_u16_le(STORED);
        header.put_u16_le(time);
        header.put_u16_le(date);
        header.put_u32_le(0); // crc: in the data descriptor
        let (sizes, extra_len) = if zip64 { (U32_MAX as u32, 20) } else { (0, 0) };
        header.put_u32_le(sizes);
        header.put_u32_le(sizes);
        header.put_u16_le(name.len() as u16);
        header.put_u16_le(extra_len);
        header.put_slice(&name);
        if zip64 {
            header.put_u16_le(0x0001);
            header.put_u16_le(16);
            header.put_u64_le(0);
            header.put_u64_le(0);
        }
        let header_len = header.len() as u64;
        send(header.freeze()).await?;

        let mut crc = crc32fast::Hasher::new();
        let mut size = 0u64;
        let mut body = (entry.open)().await?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            crc.update(&chunk);
            size += chunk.len() as u64;
            send(chunk).await?;
        }
        if !zip64 && size >= U32_MAX {
            return Err(io::Error::other(format!(
                "{} grew past 4 GiB while it was archived",
                String::from_utf8_lossy(&name)
            )));
        }
        let crc = crc.finalize();
        let mut descriptor = BytesMut::with_capacity(24);
        descriptor.put_u32_le(DATA_DESCRIPTOR);
        descriptor.put_u32_le(crc);
        if zip64 {
            descriptor.put_u64_le(size);
            descriptor.put_u64_le(size);
        } else {
            descriptor.put_u32_le(size as u32);
            descriptor.put_u32_le(size as u32);
        }
        let descriptor_len = descriptor.len() as u64;
        send(descriptor.freeze()).await?;
        written.push(Written {
            name: String::from_utf8(name).expect("it was a String"),
            time,
            date,
            crc,
            size,
            offset,
            zip64,
        });
        offset += header_len + size + descriptor_len;
    }

    let central_start = offset;
    let mut central = BytesMut::new();
    for w in &written {
        let name = w.name.as_bytes();
        let big_size = w.size >= U32_MAX;
        let big_offset = w.offset >= U32_MAX;
        let mut extra = BytesMut::new();
        if big_size || big_offset {
            extra.put_u16_le(0x0001);
            let fields = if big_size { 16 } else { 0 } + if big_offset { 8 } else { 0 };
            extra.put_u16_le(fields);
            if big_size {
                extra.put_u64_le(w.size);
                extra.put_u64_le(w.size);
            }
            if big_offset {
                extra.put_u64_le(w.offset);
            }
        }
        let zip64 = w.zip64 || big_size || big_offset;
        central.put_u32_le(CENTRAL_HEADER);
        central.put_u16_le((3 << 8) | version_needed(zip64)); // made by: Unix
        central.put_u16_le(version_needed(zip64));
        central.put_u16_le(FLAGS);
        central.put_u16_le(STORED);
        central.put_u16_le(w.time);
        central.put_u16_le(w.date);
        central.put_u32_le(w.crc);
        let size32 = if big_size {
            U32_MAX as u32
        } else {
            w.size as u32
        };
        central.put_u32_le(size32);
        central.put_u32_le(size32);
        central.put_u16_le(name.len() as u16);
        central.put_u16_le(extra.len() as u16);
        central.put_u16_le(0); // comment
        central.put_u16_le(0); // disk
        central.put_u16_le(0); // internal attributes
        central.put_u32_le(0o100644 << 16); // a regular file, rw-r--r--
        central.put_u32_le(if big_offset {
            U32_MAX as u32
        } else {
            w.offset as u32
        });
        central.put_slice(name);
        central.put_slice(&extra);
        if central.len() >= 1 << 20 {
            offset += central.len() as u64;
            send(central.split().freeze()).await?;
        }
    }
    offset += central.len() as u64;
    let central_size = offset - central_start;
    let count = written.len() as u64;
    let mut end = central;
    let zip64_end = count >= 0xFFFF || central_size >= U32_MAX || central_start >= U32_MAX;
    if zip64_end {
        let record_at = offset;
        end.put_u32_le(ZIP64_END);
        end.put_u64_le(44);
        end.put_u16_le((3 << 8) | 45);
        end.put_u16_le(45);
        end.put_u32_le(0);
        end.put_u32_le(0);
        end.put_u64_le(count);
        end.put_u64_le(count);
        end.put_u64_le(central_size);
        end.put_u64_le(central_start);
        end.put_u32_le(ZIP64_LOCATOR);
        end.put_u32_le(0);
        end.put_u64_le(record_at);
        end.put_u32_le(1);
    }
    end.put_u32_le(END_OF_CENTRAL);
    end.put_u16_le(0);
    end.put_u16_le(0);
    let count16 = count.min(0xFFFF) as u16;
    end.put_u16_le(count16);
    end.put_u16_le(count16);
    end.put_u32_le(central_size.min(U32_MAX) as u32);
    end.put_u32_le(central_start.min(U32_MAX) as u32);
    end.put_u16_le(0);
    send(end.freeze()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn entry(name: &str, data: Vec<u8>) -> ZipEntry {
        let bytes = data.len() as u64;
        ZipEntry {
            name: name.into(),
            bytes,
            modified: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            open: Box::new(move || {
                Box::pin(async move {
                    // In several pieces, as a file is read.
                    let pieces: Vec<io::Result<Bytes>> = data
                        .chunks(7)
                        .map(|c| Ok(Bytes::copy_from_slice(c)))
                        .collect();
                    Ok(Box::pin(futures::stream::iter(pieces)) as ByteStream)
                })
            }),
        }
    }

    #[tokio::test]
    async fn an_independent_reader_reads_back_every_entry() {
        let files: Vec<(String, Vec<u8>)> = (0..5)
            .map(|i| {
                (
                    format!("frame_{i:04}.png"),
                    (0..(i * 1000 + 3)).map(|b| (b * 7 + i) as u8).collect(),
                )
            })
            .chain([
                ("empty.png".to_string(), Vec::new()),
                ("ü.exr".to_string(), b"x".to_vec()),
            ])
            .collect();
        let entries = files
            .iter()
            .map(|(name, data)| entry(name, data.clone()))
            .collect();
        let archive = super::super::collect_bytes(stream(entries)).await.unwrap();
        let mut zip = ::zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
        assert_eq!(zip.len(), files.len());
        for (i, (name, data)) in files.iter().enumerate() {
            let mut file = zip.by_index(i).unwrap();
            assert_eq!(file.name(), name);
            assert_eq!(file.compression(), ::zip::CompressionMethod::Stored);
            let mut back = Vec::new();
            file.read_to_end(&mut back).unwrap();
            assert_eq!(&back, data, "{name}");
        }
    }

    #[tokio::test]
    async fn an_empty_archive_is_a_valid_one() {
        let archive = super::super::collect_bytes(stream(Vec::new()))
            .await
            .unwrap();
        assert_eq!(archive.len(), 22);
        let zip = ::zip::ZipArchive::new(std::io::Cursor::new(archive)).unwrap();
        assert_eq!(zip.len(), 0);
    }

    #[tokio::test]
    async fn a_source_that_fails_cuts_the_archive_with_its_error() {
        let broken = ZipEntry {
            name: "broken.png".into(),
            bytes: 10,
            modified: Utc::now(),
            open: Box::new(|| Box::pin(async { Err(io::Error::other("gone from disk")) })),
        };
        let err = super::super::collect_bytes(stream(vec![entry("a.png", vec![1; 5]), broken]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("gone from disk"), "{err}");
    }
}
