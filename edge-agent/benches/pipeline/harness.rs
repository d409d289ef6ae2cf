//! How a benchmark's `main` starts: the check that Mosquitto is installed, the async runtime,
//! and the exit code (1 with the reason when the benchmark fails).

use std::future::Future;
use std::process::ExitCode;

use crate::support::mosquitto;

/// Runs `bench` on a multi-threaded runtime; with `needs_broker`, only if Mosquitto is there.
pub fn run<F, Fut>(what: &str, needs_broker: bool, bench: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if needs_broker && !mosquitto::mosquitto_available() {
        eprintln!(
            "the {what} benchmark needs a real broker: {}",
            mosquitto::MOSQUITTO_MISSING
        );
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
