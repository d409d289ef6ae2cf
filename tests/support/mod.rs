//! Support code for the integration tests: real processes (Mosquitto, the `edge-agent` binary)
//! on loopback ports chosen by the kernel, with every wait bounded and every process stopped
//! on drop, so a failing test never leaves a broker or an agent behind.
//!
//! - [`ports::free_port`]: a port that was free a moment ago (callers retry if it is taken).
//! - [`mosquitto::Mosquitto`]: a private broker per test on its own port (never 1883), with
//!   `stop`/`kill`/`restart` on the same port for fault tests and its log for failure messages.
//! - [`mqtt::Collector`]: a subscriber that records every message, survives broker restarts by
//!   reconnecting and re-subscribing, waits on predicates, and publishes commands.
//! - [`seqcheck`]: pure analysis of SPEC §5 `seq` numbers per device (gaps, duplicates, order).
//! - [`agent::AgentProcess`] / [`agent::run_cli`]: the real binary as a daemon with a searchable
//!   log (`kill -9`, SIGTERM), or as a one-shot command with a timeout.
//! - [`testdir::TestDir`]: a temporary directory for a test's config and data.
//!
//! The async functions run on the test's tokio runtime; use
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` so the short blocking calls
//! (starting or stopping a broker) do not stall a [`mqtt::Collector`] running alongside.

// Every test file shares this module, and no single test uses all of it.
#![allow(dead_code)]

pub mod agent;
pub mod mosquitto;
pub mod mqtt;
pub mod ports;
mod process;
pub mod rabbitmq;
pub mod seqcheck;
pub mod testdir;

pub use agent::{run_cli, AgentProcess};
pub use mosquitto::Mosquitto;
pub use mqtt::Collector;
pub use ports::free_port;
pub use testdir::TestDir;
