//! The renderfarm worker agent: registers with the broker, pulls tasks, runs
//! each with what its kind needs (Blender for a chunk of frames, ffmpeg for a
//! render's video) and reports back; with GPU slots, one worker per GPU,
//! each pinned to its GPU ([`gpu`]). Talks to the broker through
//! `renderfarm-client`; never depends on the broker's server or database code.

pub mod agent;
pub mod blender;
pub mod cache;
mod chunk;
pub mod gpu;
pub mod preview;
mod process;
mod retry;
mod task;
pub mod uploads;
pub mod video;

pub use agent::{Agent, AgentConfig, AgentSummary, SlotSummary, StopSignals};
