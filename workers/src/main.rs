//! The renderfarm worker agent. Its loop (register, pull work, run Blender,
//! report) is built in the next step; for now it only says so.

fn main() {
    eprintln!("renderfarm-worker: the worker agent is not built yet; see the README");
    std::process::exit(2);
}
