//! renderfarm: a pull-based render farm for Blender. This crate is the broker
//! (HTTP API, store, scheduler) and its command-line client; the worker agent
//! lives in the `renderfarm-worker` crate and shares only the wire types.

pub mod api;
pub mod cli;
pub mod clock;
pub mod credentials;
pub mod domain;
pub mod files;
pub mod metrics;
pub mod scheduler;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod web;
pub mod webhooks;

pub use renderfarm_wire as wire;
