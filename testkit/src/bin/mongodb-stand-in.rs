//! Runs the MongoDB stand-in (a test double: see `renderfarm_testkit::proxy`)
//! until SIGTERM or Ctrl-C, for checks from outside the test binaries, such
//! as `.ci/run`'s newman run against a MongoDB-backed broker. Its first line
//! on stdout is the URI to give `renderfarm serve --store`.

use std::io::Write;

fn main() {
    let stand_in = match renderfarm_testkit::StandIn::start() {
        Ok(stand_in) => stand_in,
        Err(why) => {
            eprintln!("the MongoDB stand-in did not start: {why} (run `npm ci --prefix .ci`)");
            std::process::exit(1);
        }
    };
    println!("MongoDB stand-in at {}", stand_in.uri());
    let _ = std::io::stdout().flush();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime to wait for a signal");
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM can be watched");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    // Returning ends the process, and the server with it (PR_SET_PDEATHSIG).
}
