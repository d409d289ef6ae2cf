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

use crate::admin::console::{previous_path, ApplyError, ConfigAction, Console, LiveFeed};
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
    // The console's view of the tags, fed by the store writer with what it committed.
    let feed = cfg
        .admin
        .as_ref()
        .map(|a| LiveFeed::new(&cfg, a.history_bytes));
    let mut running =
        match runtime::start_observed(&cfg, feed.as_ref().map(LiveFeed::observer)).await {
            Ok(r) => r,
            Err(e) => {
                error!("{e:#}");
                let _ = notifier.status(&format!("failed to start: {e:#}"));
                return 1;
            }
        };
    let (actions, mut console_actions) = tokio::sync::mpsc::channel::<ConfigAction>(4);
    let mut state = AdminState::new(
        running.store.clone(),
        running.devices.clone(),
        running.publishers.clone(),
        running.command_stats.clone(),
    );
    if let (Some(a), Some(feed)) = (&cfg.admin, &feed) {
        state = state.with_console(Arc::new(Console::new(
            &cfg,
            a.clone(),
            feed.clone(),
            path.to_path_buf(),
            actions,
            Some(running.learned()),
        )));
    }
    let state = Arc::new(state);
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
                    Ok(()) => {
                        state.reloads_ok.fetch_add(1, Ordering::Relaxed);
                        if let Some(c) = &state.console {
                            c.set_running(running.config());
                        }
                    }
                    Err(()) => { state.reloads_failed.fetch_add(1, Ordering::Relaxed); }
                }
                let _ = notifier.reloaded(&status_line(running.config()));
            }
            Some(action) = console_actions.recv() => {
                let _ = notifier.reloading();
                let (result, reply) = match action {
                    ConfigAction::Apply { text, reply } => (apply_text(&mut running, path, text).await, reply),
                    ConfigAction::Rollback { reply } => (rollback(&mut running, path).await, reply),
                };
                match &result {
                    Ok(summary) => {
                        info!(summary = %summary, "config changed from the console and reloaded");
                        state.reloads_ok.fetch_add(1, Ordering::Relaxed);
                        if let Some(c) = &state.console {
                            c.set_running(running.config());
                        }
                    }
                    Err(e) => {
                        warn!(error = ?e, "a config change from the console was not applied; still running the previous one");
                        state.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = reply.send(result);
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

/// Validates `text` as the new board config, checks a reload can apply it, writes it over the
/// config file atomically (the file it replaces kept as `<file>.previous`), and reloads. On
/// any error nothing changes: a reload that fails after the write puts the old file back.
/// For a rollback the text is the previous file's, so the two files trade places.
async fn apply_text(
    running: &mut runtime::Running,
    path: &Path,
    text: String,
) -> Result<String, ApplyError> {
    let new = edge_config::parse(&text, path, &edge_config::SystemSecrets)
        .map_err(|e| ApplyError::Invalid(e.0))?;
    crate::daemon::reload::plan(running.config(), &new)
        .map_err(|e| ApplyError::Refused(e.to_string()))?;
    let old = std::fs::read_to_string(path)
        .map_err(|e| ApplyError::Refused(format!("cannot read {}: {e}", path.display())))?;
    let previous = previous_path(path);
    write_atomically(&previous, &old)?;
    write_atomically(path, &text)?;
    match running.reload(new).await {
        Ok(plan) => Ok(summary(&plan)),
        Err(e) => {
            let back = write_atomically(path, &old);
            Err(ApplyError::Refused(match back {
                Ok(()) => format!("{e}; the previous file is back in place"),
                Err(w) => format!("{e}; and the previous file could not be put back: {w:?}"),
            }))
        }
    }
}

/// Puts `<file>.previous` back (the file it replaces becomes the previous one, so a second
/// rollback goes forward again).
async fn rollback(running: &mut runtime::Running, path: &Path) -> Result<String, ApplyError> {
    let previous = previous_path(path);
    let text = std::fs::read_to_string(&previous).map_err(|_| {
        ApplyError::Refused(format!(
            "there is no previous config to roll back to ({} is missing)",
            previous.display()
        ))
    })?;
    apply_text(running, path, text).await
}

fn summary(plan: &crate::daemon::reload::ReloadPlan) -> String {
    let names = |v: Vec<&str>| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    format!(
        "added {}; changed {}; removed {}",
        names(plan.added.iter().map(|d| d.name.as_str()).collect()),
        names(plan.changed.iter().map(|d| d.name.as_str()).collect()),
        names(plan.removed.iter().map(String::as_str).collect()),
    )
}

/// Writes `text` to `path` so that a crash leaves the old file or the new one, never a part:
/// a temporary file beside it (with the old file's permissions), synced, renamed over it, and
/// the directory synced.
fn write_atomically(path: &Path, text: &str) -> Result<(), ApplyError> {
    use std::io::Write as _;
    let fail = |what: &str, e: std::io::Error| {
        ApplyError::Refused(format!("cannot {what} {}: {e}", path.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp).map_err(|e| fail("write beside", e))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = f.set_permissions(meta.permissions());
    }
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| fail("write beside", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail("replace", e)
    })?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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
