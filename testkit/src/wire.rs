//! Just enough of MongoDB's wire protocol for the proxy: whole messages
//! framed by their length, and OP_MSG's flags and body document. Everything
//! the proxy does not change it forwards byte for byte.

use bson::Document;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// OP_MSG, the only opcode the driver speaks to MongoDB 3.6+.
pub const OP_MSG: i32 = 2013;
/// OP_MSG flag: a CRC-32C follows the sections.
const CHECKSUM_PRESENT: u32 = 1;
/// OP_MSG flag: the sender sends another message without waiting for a reply
/// (on a request: an unacknowledged write, no reply comes).
pub const MORE_TO_COME: u32 = 1 << 1;
/// OP_MSG flag: the client accepts a stream of replies (awaitable hello).
pub const EXHAUST_ALLOWED: u32 = 1 << 16;

const HEADER_LEN: usize = 16;
/// The server's own limit on a message (48 MB), so a broken length cannot
/// make the proxy allocate without bound.
const MAX_MESSAGE: usize = 48 * 1000 * 1000;

/// One whole wire message, header included.
#[derive(Debug, Clone)]
pub struct Message(pub Vec<u8>);

impl Message {
    /// Reads one message; `None` at a clean end of stream.
    pub async fn read(from: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Message>> {
        let mut len = [0u8; 4];
        match from.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let total = i32::from_le_bytes(len);
        let total = usize::try_from(total).unwrap_or(0);
        if !(HEADER_LEN..=MAX_MESSAGE).contains(&total) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a wire message of {total} bytes"),
            ));
        }
        let mut bytes = vec![0u8; total];
        bytes[..4].copy_from_slice(&len);
        from.read_exact(&mut bytes[4..]).await?;
        Ok(Some(Message(bytes)))
    }

    /// Writes the message whole.
    pub async fn write(&self, to: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
        to.write_all(&self.0).await
    }

    /// The little-endian i32 at `at`; 0 past the end (only a malformed
    /// message is that short, and its body then reads as none).
    fn i32_at(&self, at: usize) -> i32 {
        match self.0.get(at..at + 4) {
            Some(b) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    /// The sender's id for this message; a reply names it in `responseTo`.
    pub fn request_id(&self) -> i32 {
        self.i32_at(4)
    }

    pub fn op_code(&self) -> i32 {
        self.i32_at(12)
    }

    /// OP_MSG flag bits (0 for other opcodes).
    pub fn flags(&self) -> u32 {
        if self.op_code() == OP_MSG && self.0.len() >= HEADER_LEN + 4 {
            self.i32_at(HEADER_LEN) as u32
        } else {
            0
        }
    }

    /// The OP_MSG body (its one kind-0 section), if this is an OP_MSG.
    pub fn body(&self) -> Option<Document> {
        if self.op_code() != OP_MSG {
            return None;
        }
        let mut end = self.0.len();
        if self.flags() & CHECKSUM_PRESENT != 0 {
            end = end.checked_sub(4)?;
        }
        let mut at = HEADER_LEN + 4;
        while at < end {
            let kind = self.0[at];
            at += 1;
            let len = usize::try_from(self.i32_at(at)).ok().filter(|&l| l > 0)?;
            if kind == 0 {
                return Document::from_reader(&mut self.0.get(at..at + len)?).ok();
            }
            // A kind-1 document sequence: its length counts itself.
            at += len;
        }
        None
    }

    /// The same message with OP_MSG flags changed; a checksum, which would
    /// no longer match, is dropped with its flag.
    pub fn with_flags(&self, set: u32, clear: u32) -> Message {
        let mut bytes = self.0.clone();
        let mut flags = self.flags();
        if flags & CHECKSUM_PRESENT != 0 {
            bytes.truncate(bytes.len() - 4);
            flags &= !CHECKSUM_PRESENT;
        }
        flags = (flags | set) & !clear;
        bytes[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&flags.to_le_bytes());
        let len = bytes.len() as i32;
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        Message(bytes)
    }

    /// An OP_MSG with `body` (a reply when `response_to` names a request).
    pub fn op_msg(request_id: i32, response_to: i32, body: &Document) -> Message {
        let mut doc = Vec::new();
        body.to_writer(&mut doc)
            .expect("a document built here serialises");
        let mut bytes = Vec::with_capacity(HEADER_LEN + 5 + doc.len());
        let len = (HEADER_LEN + 4 + 1 + doc.len()) as i32;
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&request_id.to_le_bytes());
        bytes.extend_from_slice(&response_to.to_le_bytes());
        bytes.extend_from_slice(&OP_MSG.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&doc);
        Message(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[tokio::test]
    async fn a_reply_reads_back_with_its_ids_flags_and_body() {
        let body = doc! { "ok": 1.0, "n": 3 };
        let reply = Message::op_msg(7, 42, &body);
        let mut bytes = reply.0.as_slice();
        let read = Message::read(&mut bytes).await.unwrap().unwrap();
        assert_eq!(read.request_id(), 7);
        assert_eq!(read.op_code(), OP_MSG);
        assert_eq!(read.flags(), 0);
        assert_eq!(read.body(), Some(body));
        assert!(bytes.is_empty(), "exactly one message was read");
    }

    #[tokio::test]
    async fn changing_flags_keeps_the_body_and_drops_a_checksum() {
        let body = doc! { "hello": 1, "$db": "admin" };
        let plain = Message::op_msg(1, 0, &body);
        let mut with_checksum = plain.with_flags(EXHAUST_ALLOWED | CHECKSUM_PRESENT, 0);
        with_checksum.0.extend_from_slice(&[1, 2, 3, 4]);
        let len = with_checksum.0.len() as i32;
        with_checksum.0[..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(with_checksum.body(), Some(body.clone()));

        let stripped = with_checksum.with_flags(0, EXHAUST_ALLOWED);
        assert_eq!(stripped.flags(), 0);
        assert_eq!(stripped.0.len(), plain.0.len());
        assert_eq!(stripped.body(), Some(body));
    }

    #[tokio::test]
    async fn a_length_beyond_the_servers_limit_is_refused() {
        let bytes = (MAX_MESSAGE as i32 + 1).to_le_bytes();
        let err = Message::read(&mut bytes.as_slice()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
