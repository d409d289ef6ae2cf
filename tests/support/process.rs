//! Child-process plumbing shared by the broker and agent wrappers: signals without linking
//! libc (the workspace forbids unsafe code), bounded waits, and log excerpts for failures.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const POLL: Duration = Duration::from_millis(20);

/// How long a child may take to die after SIGKILL before it is reported as stuck.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Sends SIGTERM to `child` unless it has already exited.
///
/// Only a child that has not been reaped is signalled: until `wait` collects it, its pid
/// cannot belong to anyone else, so the signal cannot hit an unrelated process.
pub fn sigterm(child: &mut Child) -> anyhow::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    // The shell's builtin `kill` exists on every system with `sh`; `/bin/kill` does not.
    let output = Command::new("sh")
        .arg("-c")
        .arg("kill -TERM \"$1\"")
        .arg("sh")
        .arg(child.id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running `sh -c kill -TERM` to stop a child process")?;
    if !output.status.success() && child.try_wait()?.is_none() {
        bail!(
            "kill -TERM {} failed: {}",
            child.id(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Waits for `child` to exit for at most `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// SIGKILL and reap, bounded.
pub fn kill_and_reap(child: &mut Child) -> anyhow::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    if let Err(e) = child.kill() {
        // InvalidInput means it exited between the check and the kill.
        if e.kind() != ErrorKind::InvalidInput {
            return Err(e).context(format!("SIGKILL to pid {}", child.id()));
        }
    }
    match wait_timeout(child, KILL_WAIT)? {
        Some(status) => Ok(status),
        None => bail!(
            "pid {} still running {} s after SIGKILL",
            child.id(),
            KILL_WAIT.as_secs()
        ),
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status and whether the
/// process stopped within the grace period.
pub fn terminate(child: &mut Child, grace: Duration) -> anyhow::Result<(ExitStatus, bool)> {
    sigterm(child)?;
    if let Some(status) = wait_timeout(child, grace)? {
        return Ok((status, true));
    }
    Ok((kill_and_reap(child)?, false))
}

/// A file's content as text (lossy), empty when it does not exist yet.
pub fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

/// A file's content from byte `offset` on, as text (lossy).
pub fn read_lossy_from(path: &Path, offset: u64) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = usize::try_from(offset).map_or(bytes.len(), |o| o.min(bytes.len()));
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(_) => String::new(),
    }
}

/// The current length of a file, 0 when it does not exist yet.
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// The last `lines` lines of `text`, for error messages that must stay readable.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[... {skip} earlier lines ...]\n"));
    }
    for line in &all[skip..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_and_says_how_many_were_cut() {
        assert_eq!(tail("a\nb\nc\n", 2), "[... 1 earlier lines ...]\nb\nc\n");
        assert_eq!(tail("a\nb", 5), "a\nb\n");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn terminate_stops_a_process_that_honours_sigterm() -> anyhow::Result<()> {
        let mut child = Command::new("sleep").arg("30").spawn()?;
        let (status, graceful) = terminate(&mut child, Duration::from_secs(5))?;
        assert!(graceful, "sleep ignored SIGTERM: {status}");
        assert!(!status.success());
        Ok(())
    }

    #[test]
    fn terminate_falls_back_to_sigkill_when_sigterm_is_ignored() -> anyhow::Result<()> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("trap '' TERM; echo ready; while :; do sleep 0.1; done")
            .stdout(Stdio::piped())
            .spawn()?;
        // Wait until the trap is installed, or SIGTERM would arrive before it.
        if let Some(stdout) = child.stdout.as_mut() {
            use std::io::Read;
            let mut byte = [0u8; 1];
            stdout.read_exact(&mut byte)?;
        }
        let (_, graceful) = terminate(&mut child, Duration::from_millis(300))?;
        assert!(!graceful);
        assert!(child.try_wait()?.is_some());
        Ok(())
    }
}
