//! Log lines for programs (SPEC §3): JSON lines with `--log-format json` or
//! `EDGE_AGENT_LOG_FORMAT=json`, and the syslog priority in front of each line when stderr is
//! the journal stream systemd gave the process.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::bin;

/// Three mistakes (an unknown key, a value out of range, no device): one log line each.
const BROKEN: &str = r#"[gateway]
id = "gw-1"
data_dir = "data"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"
colour = "blue"

[[northbound]]
name = "mes"
url = "mqtt://127.0.0.1:1"
max_inflight = 0
"#;

fn broken_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("edge-agent.toml");
    std::fs::write(&path, BROKEN).expect("write config");
    path
}

/// `edge-agent run` on the broken config with `args` and `env`; its exit code and stderr.
fn run_broken(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = broken_config(dir.path());
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .arg("run")
        .arg("-c")
        .arg(&config)
        .env_remove("JOURNAL_STREAM")
        .env_remove("EDGE_AGENT_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let out = cmd.output().expect("edge-agent runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_json_errors(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 3, "one line per mistake:\n{stderr}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert_eq!(v["level"], "ERROR", "{line}");
        assert!(v["line"].as_u64().is_some_and(|n| n > 0), "{line}");
        let message = v["message"].as_str().expect("message");
        assert!(message.contains("edge-agent.toml:"), "{line}");
    }
}

#[test]
fn run_with_log_format_json_reports_each_config_error_as_one_json_object_per_line() {
    let (code, stderr) = run_broken(&["--log-format", "json"], &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert_json_errors(&stderr);
    assert!(stderr.contains("colour"), "{stderr}");
}

#[test]
fn edge_agent_log_format_json_in_the_environment_does_the_same() {
    let (code, stderr) = run_broken(&[], &[("EDGE_AGENT_LOG_FORMAT", "json")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert_json_errors(&stderr);
}

#[test]
fn under_systemd_each_line_starts_with_its_syslog_priority() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = broken_config(dir.path());
    // systemd names the stream it connected stderr to; the agent checks that stderr is it.
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", writer.as_raw_fd()))
        .expect("the pipe's inode");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = Command::new(bin())
        .args(["run", "-c"])
        .arg(&config)
        .env("JOURNAL_STREAM", &stream)
        .env_remove("EDGE_AGENT_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer)
        .spawn()
        .expect("edge-agent runs");
    let mut stderr = String::new();
    reader.read_to_string(&mut stderr).expect("read stderr");
    let status = child.wait().expect("exit");
    assert_eq!(status.code(), Some(64), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "one line per mistake:\n{stderr}");
    for line in lines {
        assert!(line.starts_with("<3>"), "an error is priority 3: {line}");
        assert!(line.contains("edge-agent.toml:"), "{line}");
    }
}

#[test]
fn a_journal_stream_that_is_not_stderr_leaves_the_text_as_it_is() {
    // JOURNAL_STREAM inherited by a shell whose stderr is a pipe or a terminal.
    let (code, stderr) = run_broken(&[], &[("JOURNAL_STREAM", "8:1234")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(!stderr.contains("<3>"), "{stderr}");
    assert!(
        stderr.contains("3 errors"),
        "the listing for a person:\n{stderr}"
    );
}
