//! Black-box tests of the broker's HTTP API: a real broker on port 0, a real
//! SQLite file, real HTTP.

mod adaptive;
mod api_docs;
mod auth;
mod bad_input;
mod contract;
mod dashboard;
mod files;
mod helpers;
mod hours;
mod lifecycle;
mod listing;
mod long_poll;
mod operators;
mod path_mapping;
mod postman;
mod previews;
mod rate_limits;
mod videos;
mod warm_preference;
