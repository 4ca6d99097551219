//! Black-box tests of the broker's HTTP API: a real broker on port 0, a real
//! SQLite file, real HTTP.

mod bad_input;
mod helpers;
mod lifecycle;
mod long_poll;
mod operators;
