//! Test support for renderfarm's own tests; not a library for anyone else.
//!
//! Its one part is a **MongoDB stand-in** (a test double, named as such): no
//! MongoDB server installs on our build machines, so the MongoDB half of the
//! tests runs against `jongodb`, an in-memory MongoDB-compatible server from
//! the npm registry (`.ci/package.json` pins it), behind [`proxy`], which
//! supplies the commands that server lacks and serialises the rest. See
//! [`proxy`] for exactly what it fakes. When `TEST_MONGODB_URI` names a real
//! server, tests use that instead ([`mongodb_for_tests`]).

pub mod proxy;
mod server;
mod wire;

pub use server::{jongodb_binary, StandIn};

use std::io::Write;
use std::sync::OnceLock;

/// Set in CI: the MongoDB half must run (a real server or the stand-in);
/// without either, tests fail instead of printing SKIPPED.
pub const REQUIRE_MONGODB: &str = "RENDERFARM_REQUIRE_MONGODB";
/// Set only where a real server runs (the GitHub workflow's `mongo:7`):
/// tests that prove something only on a real server fail instead of skipping
/// on the stand-in.
pub const REQUIRE_MONGODB_SERVER: &str = "RENDERFARM_REQUIRE_MONGODB_SERVER";

/// Which MongoDB the tests talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MongoTarget {
    /// `TEST_MONGODB_URI`: a real server.
    Server(String),
    /// The in-memory stand-in behind the test proxy, started by this process.
    StandIn(String),
}

impl MongoTarget {
    /// The connection string (no database in its path).
    pub fn uri(&self) -> &str {
        match self {
            MongoTarget::Server(uri) | MongoTarget::StandIn(uri) => uri,
        }
    }

    /// True for a real MongoDB server.
    pub fn is_real_server(&self) -> bool {
        matches!(self, MongoTarget::Server(_))
    }

    /// For a test that proves something only a real server can show (a
    /// validator rejecting a document, a race the stand-in's serialising proxy
    /// cannot lose): true when it may run. On the stand-in it prints a visible
    /// SKIPPED line, or panics when [`REQUIRE_MONGODB_SERVER`] is set.
    pub fn real_server_or_skip(&self, what: &str) -> bool {
        if self.is_real_server() {
            return true;
        }
        if flag(REQUIRE_MONGODB_SERVER) {
            panic!(
                "{what} needs a real MongoDB server and {REQUIRE_MONGODB_SERVER} is set: set TEST_MONGODB_URI"
            );
        }
        skipped(&format!(
            "{what}: needs a real MongoDB server; the in-memory stand-in cannot show it (set TEST_MONGODB_URI)"
        ));
        false
    }
}

/// The MongoDB for this test process: `TEST_MONGODB_URI` if set, otherwise
/// the stand-in, started once per process on first use. `None` (after a
/// visible SKIPPED line) when neither is available; a panic instead when
/// [`REQUIRE_MONGODB`] is set.
pub fn mongodb_for_tests(what: &str) -> Option<MongoTarget> {
    if let Ok(uri) = std::env::var("TEST_MONGODB_URI") {
        if !uri.trim().is_empty() {
            return Some(MongoTarget::Server(uri));
        }
    }
    static STAND_IN: OnceLock<Result<StandIn, String>> = OnceLock::new();
    match STAND_IN.get_or_init(|| StandIn::start().map_err(|e| e.to_string())) {
        Ok(stand_in) => Some(MongoTarget::StandIn(stand_in.uri().to_string())),
        Err(why) => {
            if flag(REQUIRE_MONGODB) {
                panic!("{what}: no MongoDB to test against and {REQUIRE_MONGODB} is set: {why}");
            }
            skipped(&format!(
                "{what}: no MongoDB to test against ({why}); run `npm ci --prefix .ci` for the stand-in or set TEST_MONGODB_URI"
            ));
            None
        }
    }
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn skipped(message: &str) {
    // Straight to the stderr handle, which the test harness does not
    // capture, so the skip shows in every run (and .ci/run counts it).
    let _ = writeln!(std::io::stderr(), "SKIPPED: {message}");
}
