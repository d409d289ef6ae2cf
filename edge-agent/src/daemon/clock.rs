//! Whether the gateway's clock can judge the age of a command. A gateway without a
//! battery-backed clock (a Raspberry Pi CM4 has none) boots with the time it saved at its last
//! shutdown, or 1970, and is wrong until NTP synchronises it. While the clock is known to be
//! wrong, timed commands are refused (see `mes_bridge::gate`): an age judged by a wrong clock
//! could let an old command through.
//!
//! The clock is taken as not synchronised when it reads a time before this build's floor
//! (no gateway runs before it was built), or when the kernel's time service says so
//! (`timedatectl show -p NTPSynchronized`, checked every 30 s; where there is no systemd or no
//! answer, only the floor applies).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// 2026-01-01T00:00:00Z: a clock before it is certainly wrong.
pub const FLOOR_MS: u64 = 1_767_225_600_000;
const EVERY: Duration = Duration::from_secs(30);
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// The latest verdict on the gateway's clock, shared with the publishers.
#[derive(Debug, Clone)]
pub struct ClockStatus(Arc<AtomicBool>);

impl ClockStatus {
    /// A status fixed at `synchronised` (tests, tools).
    pub fn fixed(synchronised: bool) -> ClockStatus {
        ClockStatus(Arc::new(AtomicBool::new(synchronised)))
    }

    pub fn is_synchronised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the time service says: `Some(true|false)`, or `None` when it cannot be asked.
async fn ntp_synchronised() -> Option<bool> {
    let out = tokio::time::timeout(
        PROBE_LIMIT,
        Command::new("timedatectl")
            .args(["show", "-p", "NTPSynchronized", "--value"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    if !out.status.success() {
        return None;
    }
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// The verdict from the clock's reading and the time service's answer.
pub fn verdict(now_ms: u64, ntp: Option<bool>) -> bool {
    now_ms >= FLOOR_MS && ntp != Some(false)
}

/// Watches the clock until `stop`. The first verdict, from the clock's reading alone, is in
/// at once; the time service is asked right after, off the start-up path, and every 30 s.
pub fn spawn_clock_watch(mut stop: watch::Receiver<bool>) -> (ClockStatus, JoinHandle<()>) {
    let first = verdict(edge_model::now_ms(), None);
    if !first {
        warn!("the gateway's clock reads a time before this build: timed commands are refused until it is synchronised");
    }
    let status = ClockStatus::fixed(first);
    let shared = status.clone();
    let task = tokio::spawn(async move {
        let mut last = first;
        loop {
            let now = verdict(edge_model::now_ms(), ntp_synchronised().await);
            if now != last {
                if now {
                    info!("the gateway's clock is synchronised: timed commands are judged again");
                } else {
                    warn!("the gateway's clock is not synchronised (NTP): timed commands are refused until it is");
                }
                last = now;
            }
            shared.0.store(now, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    });
    (status, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_before_the_floor_or_denied_by_ntp_is_not_synchronised() {
        assert!(!verdict(0, None), "1970 after a boot without a clock");
        assert!(!verdict(FLOOR_MS - 1, Some(true)));
        assert!(!verdict(FLOOR_MS + 1, Some(false)));
        assert!(verdict(FLOOR_MS + 1, Some(true)));
        assert!(
            verdict(FLOOR_MS + 1, None),
            "without a time service only the floor can be checked"
        );
    }
}
