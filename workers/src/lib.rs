//! The renderfarm worker agent: registers with the broker, pulls tasks, runs
//! Blender on them and reports back. Depends on the wire types only, never on
//! the broker's server or database code.

pub mod agent;
pub mod blender;
pub mod client;

pub use agent::{Agent, AgentConfig, AgentSummary, StopSignals};
