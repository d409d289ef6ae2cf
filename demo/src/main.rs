//! `edge-demo`: the whole product on one machine with nothing installed. A binary of its own, so
//! that the embedded broker and the simulated PLCs never ship in the `edge-agent` the package
//! installs; the agent it runs is the same library code.

use std::process::ExitCode;

use clap::Parser;
use edge_agent::logging::{self, LogFormat};
use tracing::error;

mod demo;

#[derive(Parser, Debug)]
#[command(
    name = "edge-demo",
    version,
    about = "The whole product on one machine: simulated PLCs, an embedded broker, the agent"
)]
struct Cli {
    /// Log line format on stderr: `text` (default) or `json` (one object per line). Also
    /// `EDGE_AGENT_LOG_FORMAT`.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    demo: demo::DemoArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The embedded broker logs every connection at info; keep the demo's screen for the
    // agent's own lines unless RUST_LOG asks for more.
    logging::setup(
        cli.log_format,
        &format!("info,rumqttd=off,{}", logging::OPCUA_QUIET),
    );
    edge_agent::init_tls();
    match demo::run(cli.demo) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
