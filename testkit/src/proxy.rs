//! **A test double**: a proxy between the MongoDB driver and `jongodb`, the
//! in-memory MongoDB-compatible server the tests run on where no MongoDB
//! server can be installed.
//!
//! What it fakes, and why:
//! - `jongodb` answers `CommandNotFound` to `create`, `collMod`,
//!   `listCollections`, `drop`, `dropDatabase` and `endSessions`, which the
//!   store's migrations and the tests' cleanup send. The proxy answers them
//!   itself from a catalogue of the collections created through it (the only
//!   way a collection comes to exist on a server this process started):
//!   `create` and `collMod` record the collection and accept its validator
//!   **without enforcing it** (`jongodb` enforces none; the validator test
//!   runs only on a real server); `drop` and `dropDatabase` delete the
//!   collections' documents upstream (their indexes stay, harmless on the
//!   per-test databases it is used for); `endSessions` is a no-op (`jongodb`
//!   keeps no sessions to end). `dropIndexes` is not faked: nothing sends it.
//! - `jongodb`'s `findAndModify` is not atomic across connections (two
//!   claimers can both take one task). The proxy therefore **serialises**
//!   every command: one at a time, each waiting for its reply before the
//!   next is forwarded. So a race test through the proxy cannot fail, and is
//!   skipped here (it runs against a real server).
//! - Monitoring `hello`s are forwarded without waiting for the others, with
//!   their exhaust flag cleared so that each gets exactly one reply.
//!
//! Every other command is forwarded byte for byte on an upstream connection
//! of its own per client connection (so cursors and sessions stay together).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use bson::{doc, Bson, Document};
use tokio::net::{TcpListener, TcpStream};

use crate::wire::{Message, EXHAUST_ALLOWED, MORE_TO_COME};

/// Commands `jongodb` lacks that the proxy answers itself.
const ANSWERED_HERE: &[&str] = &[
    "create",
    "collMod",
    "listCollections",
    "drop",
    "dropDatabase",
    "endSessions",
];

/// Commands after whose success a collection exists.
const CREATING: &[&str] = &["insert", "update", "findAndModify", "createIndexes"];

/// Server error codes a real MongoDB gives for these cases.
const NAMESPACE_NOT_FOUND: i32 = 26;
const NAMESPACE_EXISTS: i32 = 48;

/// The proxy's state shared by its connections.
pub struct Proxy {
    upstream: SocketAddr,
    /// Held from forwarding a command until its reply is read.
    serial: tokio::sync::Mutex<()>,
    /// Database name → collections that exist in it.
    catalogue: Mutex<HashMap<String, BTreeSet<String>>>,
    next_request_id: AtomicI32,
}

impl Proxy {
    /// A proxy in front of the server at `upstream`.
    pub fn new(upstream: SocketAddr) -> Arc<Proxy> {
        Arc::new(Proxy {
            upstream,
            serial: tokio::sync::Mutex::new(()),
            catalogue: Mutex::new(HashMap::new()),
            next_request_id: AtomicI32::new(1),
        })
    }

    /// Accepts connections on `listener` until the runtime stops.
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            let proxy = self.clone();
            tokio::spawn(async move {
                // A connection's end, clean or not, concerns only itself: the
                // driver reconnects.
                let _ = proxy.serve(client).await;
            });
        }
    }

    async fn serve(&self, mut client: TcpStream) -> std::io::Result<()> {
        let mut upstream = TcpStream::connect(self.upstream).await?;
        client.set_nodelay(true)?;
        upstream.set_nodelay(true)?;
        while let Some(request) = Message::read(&mut client).await? {
            let body = request.body();
            let command = body
                .as_ref()
                .and_then(|b| b.keys().next().cloned())
                .unwrap_or_default();
            let reply = if ANSWERED_HERE.contains(&command.as_str()) {
                let body = body.unwrap_or_default();
                let answer = self.answer(&command, &body, &mut upstream).await?;
                Some(self.message(request.request_id(), &answer))
            } else if command == "hello" || command.eq_ignore_ascii_case("isMaster") {
                let request = request.with_flags(0, EXHAUST_ALLOWED);
                self.round_trip(&request, &mut upstream).await?
            } else {
                let _turn = self.serial.lock().await;
                let reply = self.round_trip(&request, &mut upstream).await?;
                if CREATING.contains(&command.as_str()) && reply.as_ref().is_some_and(succeeded) {
                    if let Some((db, collection)) = body.as_ref().and_then(namespace) {
                        self.record(&db, &collection);
                    }
                }
                reply
            };
            if let Some(reply) = reply {
                reply.write(&mut client).await?;
            }
        }
        Ok(())
    }

    /// Forwards `request` and reads its one reply (none for a request that
    /// says none will come).
    async fn round_trip(
        &self,
        request: &Message,
        upstream: &mut TcpStream,
    ) -> std::io::Result<Option<Message>> {
        request.write(upstream).await?;
        if request.flags() & MORE_TO_COME != 0 {
            return Ok(None);
        }
        match Message::read(upstream).await? {
            Some(reply) => Ok(Some(reply)),
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn message(&self, response_to: i32, body: &Document) -> Message {
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        Message::op_msg(id, response_to, body)
    }

    fn record(&self, db: &str, collection: &str) {
        self.lock_catalogue()
            .entry(db.to_string())
            .or_default()
            .insert(collection.to_string());
    }

    fn lock_catalogue(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<String>>> {
        // A panic elsewhere cannot leave a set half-changed.
        self.catalogue.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn answer(
        &self,
        command: &str,
        body: &Document,
        upstream: &mut TcpStream,
    ) -> std::io::Result<Document> {
        let db = body.get_str("$db").unwrap_or("test").to_string();
        let collection = body.get_str(command).ok().map(str::to_string);
        let exists = |c: &str| {
            self.lock_catalogue()
                .get(&db)
                .is_some_and(|set| set.contains(c))
        };
        Ok(match (command, collection) {
            ("create", Some(c)) if exists(&c) => error(
                NAMESPACE_EXISTS,
                "NamespaceExists",
                &format!("Collection {db}.{c} already exists."),
            ),
            ("create", Some(c)) => {
                self.record(&db, &c);
                doc! { "ok": 1.0 }
            }
            ("collMod", Some(c)) if exists(&c) => doc! { "ok": 1.0 },
            ("collMod", Some(c)) => error(
                NAMESPACE_NOT_FOUND,
                "NamespaceNotFound",
                &format!("ns does not exist: {db}.{c}"),
            ),
            ("listCollections", _) => self.list_collections(&db, body),
            ("drop", Some(c)) => {
                self.empty(&db, &c, upstream).await?;
                if let Some(set) = self.lock_catalogue().get_mut(&db) {
                    set.remove(&c);
                }
                doc! { "ok": 1.0, "ns": format!("{db}.{c}") }
            }
            ("dropDatabase", _) => {
                let collections = self.lock_catalogue().remove(&db).unwrap_or_default();
                for c in collections {
                    self.empty(&db, &c, upstream).await?;
                }
                doc! { "ok": 1.0, "dropped": &db }
            }
            ("endSessions", _) => doc! { "ok": 1.0 },
            (other, _) => error(
                2,
                "BadValue",
                &format!("the test proxy cannot read this {other} command"),
            ),
        })
    }

    fn list_collections(&self, db: &str, body: &Document) -> Document {
        // The store asks by name or for all; only an equality on the name is
        // understood, which is all the driver's `list_collection_names` sends.
        let wanted = body
            .get_document("filter")
            .ok()
            .and_then(|f| f.get_str("name").ok());
        let name_only = body.get_bool("nameOnly").unwrap_or(false);
        let batch: Vec<Bson> = self
            .lock_catalogue()
            .get(db)
            .into_iter()
            .flatten()
            .filter(|c| wanted.is_none_or(|w| w == c.as_str()))
            .map(|c| {
                let mut entry = doc! { "name": c, "type": "collection" };
                if !name_only {
                    entry.insert("options", Document::new());
                    entry.insert("info", doc! { "readOnly": false });
                }
                Bson::Document(entry)
            })
            .collect();
        doc! {
            "cursor": {
                "id": 0_i64,
                "ns": format!("{db}.$cmd.listCollections"),
                "firstBatch": batch,
            },
            "ok": 1.0,
        }
    }

    /// Deletes every document of `db.collection` upstream, in turn with the
    /// other commands.
    async fn empty(
        &self,
        db: &str,
        collection: &str,
        upstream: &mut TcpStream,
    ) -> std::io::Result<()> {
        let _turn = self.serial.lock().await;
        let delete = doc! {
            "delete": collection,
            "deletes": [ { "q": {}, "limit": 0 } ],
            "$db": db,
        };
        let request = self.message(0, &delete);
        self.round_trip(&request, upstream).await.map(drop)
    }
}

fn succeeded(reply: &Message) -> bool {
    reply.body().is_some_and(|b| match b.get("ok") {
        Some(Bson::Double(ok)) => *ok == 1.0,
        Some(Bson::Int32(ok)) => *ok == 1,
        Some(Bson::Int64(ok)) => *ok == 1,
        _ => false,
    })
}

/// The database and collection a command names (`{insert: "tasks", $db: "x"}`).
fn namespace(body: &Document) -> Option<(String, String)> {
    let (_, target) = body.iter().next()?;
    let collection = target.as_str()?;
    Some((
        body.get_str("$db").ok()?.to_string(),
        collection.to_string(),
    ))
}

fn error(code: i32, name: &str, message: &str) -> Document {
    doc! { "ok": 0.0, "errmsg": message, "code": code, "codeName": name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_names_its_collection_and_database() {
        let body = doc! { "insert": "tasks", "ordered": true, "$db": "farm" };
        assert_eq!(namespace(&body), Some(("farm".into(), "tasks".into())));
        assert_eq!(namespace(&doc! { "ping": 1, "$db": "admin" }), None);
    }

    #[test]
    fn listings_show_what_was_created_and_filter_by_name() {
        let proxy = Proxy::new("127.0.0.1:1".parse().unwrap());
        proxy.record("farm", "tasks");
        proxy.record("farm", "renders");
        proxy.record("other", "x");
        let names = |body: Document| -> Vec<String> {
            proxy
                .list_collections("farm", &body)
                .get_document("cursor")
                .unwrap()
                .get_array("firstBatch")
                .unwrap()
                .iter()
                .map(|d| {
                    d.as_document()
                        .unwrap()
                        .get_str("name")
                        .unwrap()
                        .to_string()
                })
                .collect()
        };
        assert_eq!(names(doc! { "listCollections": 1 }), ["renders", "tasks"]);
        assert_eq!(
            names(doc! { "listCollections": 1, "filter": { "name": "tasks" } }),
            ["tasks"]
        );
    }
}
