//! `edge-chaos`: runs the real `edge-agent` binary against simulated PLCs and a real Mosquitto
//! while breaking things on purpose, then prints a ledger of every sample each PLC served:
//! whether it reached each northbound, how often, in what order, and what the store recorded
//! as lost. Exits 1 when a sample is missing without a loss record, arrives out of order, or
//! a value was not acquired although no fault was under way.
//!
//! Faults: a TCP fault proxy in front of each PLC and of each northbound's broker connection
//! (cut, blackhole, delay, throttle), silent PLCs, OPC UA server restarts, broker restarts
//! (short and long enough to fill the store's disk quota), agent SIGKILL and SIGTERM restarts,
//! and a few bytes of a store file corrupted (or a file truncated) between runs. Everything is
//! chosen from `--seed`.

mod ledger;
mod plc;
mod proxy;
mod run;
mod topics;

// The integration tests' support code: Mosquitto, the subscriber, the agent process. This
// program uses only part of it.
#[allow(unused_imports)]
#[path = "../../support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Break things on purpose and account for every sample.
#[derive(Parser, Debug)]
#[command(name = "edge-chaos", version)]
pub struct Args {
    /// How long to inject faults: `90s`, `2m`, `30m`, `1h`.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seed of every random choice; the same seed gives the same schedule of faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The edge-agent binary (default: `edge-agent` next to this program).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Simulated Modbus TCP PLCs.
    #[arg(long, default_value_t = 3)]
    pub modbus_tcp: usize,
    /// Simulated RTU devices behind a serial device server (RTU frames over TCP).
    #[arg(long, default_value_t = 1)]
    pub rtu: usize,
    /// Simulated OPC UA servers (their counter polled, one Read per poll).
    #[arg(long, default_value_t = 1)]
    pub opcua: usize,
    /// Poll interval of every PLC.
    #[arg(long, default_value_t = 25)]
    pub poll_ms: u64,
    /// The store's disk quota (`max_disk_mb`); long broker outages fill it.
    #[arg(long, default_value_t = 1)]
    pub quota_mb: u64,
    /// Don't damage store files between agent runs.
    #[arg(long)]
    pub no_corrupt: bool,
    /// Where to keep the config, the data directory, the agent's logs and the ledger
    /// (default: a new temporary directory, kept when the run fails).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 2m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{s}`: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHAOS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge-chaos: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run::run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("edge-chaos: the run could not be completed: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("m").is_err());
    }
}
