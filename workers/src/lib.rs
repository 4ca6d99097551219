//! The renderfarm worker agent: registers with the broker, pulls tasks, runs
//! Blender on them and reports back. Talks to the broker through
//! `renderfarm-client`; never depends on the broker's server or database code.

pub mod agent;
pub mod blender;
pub mod cache;
pub mod preview;
pub mod uploads;

pub use agent::{Agent, AgentConfig, AgentSummary, StopSignals};
