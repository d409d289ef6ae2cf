//! The daemon's life under a service manager: start, tell systemd when ready, feed its
//! watchdog only while polling and the store work, reload the config on SIGHUP (validated
//! first, the old one kept on any error), and stop within a bounded time on SIGTERM/SIGINT.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edge_config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::admin::{AdminServer, AdminState};
use crate::daemon::notify::Notifier;
use crate::daemon::permissions;
use crate::daemon::runtime::{self, ReloadError};

/// How often health is checked when systemd sets no watchdog (for `/live`).
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// Runs the agent until a stop signal; returns the process exit code.
pub async fn run(cfg: Config, path: &Path) -> u8 {
    let notifier = Notifier::from_env();
    for warning in permissions::warnings(&cfg, path) {
        warn!("{warning}");
    }
    let mut running = match runtime::start(&cfg).await {
        Ok(r) => r,
        Err(e) => {
            error!("{e:#}");
            let _ = notifier.status(&format!("failed to start: {e:#}"));
            return 1;
        }
    };
    let state = Arc::new(AdminState::new(
        running.store.clone(),
        running.devices.clone(),
        running.publishers.clone(),
        running.command_stats.clone(),
    ));
    let admin = match &cfg.admin {
        Some(a) => match AdminServer::start(a.listen, state.clone()).await {
            Ok(s) => Some(s),
            Err(e) => {
                error!(listen = %a.listen, error = %e, "cannot open the admin endpoint");
                running.stop().await;
                return 1;
            }
        },
        None => None,
    };
    state.config_applied.store(true, Ordering::Relaxed);
    info!(gateway = %cfg.gateway.id, config = %path.display(), "edge-agent running");
    if let Err(e) = notifier.ready(&status_line(&cfg)) {
        warn!(error = %e, "cannot notify the service manager");
    }

    let watchdog = Notifier::watchdog_interval();
    // systemd's advice: ping at half the interval, so one late tick is not a restart.
    let every = watchdog.map_or(HEALTH_EVERY, |w| (w / 2).min(HEALTH_EVERY));
    if let Some(w) = watchdog {
        info!(interval = ?w, "systemd watchdog armed");
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let (mut term, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            error!(error = %e, "cannot install the signal handlers");
            running.stop().await;
            return 1;
        }
    };
    let mut was_healthy = true;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                let _ = notifier.reloading();
                match reload(&mut running, path).await {
                    Ok(()) => { state.reloads_ok.fetch_add(1, Ordering::Relaxed); }
                    Err(()) => { state.reloads_failed.fetch_add(1, Ordering::Relaxed); }
                }
                let _ = notifier.reloaded(&status_line(running.config()));
            }
            _ = tick.tick() => {
                let health = running.health();
                if health.is_healthy() {
                    if watchdog.is_some() {
                        let _ = notifier.watchdog();
                    }
                    if !was_healthy {
                        info!("healthy again: the watchdog is fed");
                    }
                } else if was_healthy {
                    error!(problems = %health.problems.join("; "),
                        "unhealthy: the systemd watchdog is no longer fed and will restart the agent");
                }
                was_healthy = health.is_healthy();
                *state.health.lock().unwrap_or_else(|e| e.into_inner()) = health;
            }
        }
    }

    info!("stopping");
    let _ = notifier.stopping();
    if let Some(a) = admin {
        a.stop().await;
    }
    if tokio::time::timeout(runtime::STOP_LIMIT, running.stop())
        .await
        .is_err()
    {
        error!(limit = ?runtime::STOP_LIMIT, "stopping took too long; exiting with what is stored (unacknowledged records are resent after the restart)");
        return 1;
    }
    0
}

fn status_line(cfg: &Config) -> String {
    format!(
        "running: {} devices, {} northbounds",
        cfg.devices.len(),
        cfg.northbounds.len()
    )
}

/// Reads, validates and applies the config file again. Every error is logged, and the running
/// config stays unless the whole new one was applied.
async fn reload(running: &mut runtime::Running, path: &Path) -> Result<(), ()> {
    info!(config = %path.display(), "SIGHUP: reloading the config");
    let new = match edge_config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors.iter() {
                error!("{e}");
            }
            error!(errors = errors.len(), config = %path.display(),
                "the new config is invalid; still running the previous one");
            return Err(());
        }
    };
    match running.reload(new).await {
        Ok(plan) if plan.is_empty() => {
            info!("config reloaded: no device changed");
            Ok(())
        }
        Ok(plan) => {
            info!(
                added = %plan.added.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(","),
                removed = %plan.removed.join(","),
                changed = %plan.changed.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(","),
                unchanged = plan.unchanged.len(),
                "config reloaded"
            );
            Ok(())
        }
        Err(ReloadError::NeedsRestart(e)) => {
            error!("{e}; still running the previous config");
            Err(())
        }
        Err(ReloadError::Start(e)) => {
            error!("{e:#}; still running the previous config");
            Err(())
        }
    }
}
