//! The demo as a newcomer runs it: the real `edge-demo` binary with its embedded broker, the
//! simulated Modbus PLC and OPC UA server and the agent, on free ports. It stops by itself after
//! `--duration` or on Ctrl-C, shows where to subscribe, and both simulators' tags arrive.

// Shared with the agent's integration tests; this test uses part of it.
#[allow(unused_imports)]
#[path = "../../tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::agent::run_cli_with;
use support::{free_port, Collector, TestDir};

/// The topic root of `board-configs/demo.toml`.
const ROOT: &str = "acme/plant1/packaging/line1";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-demo"))
}

/// A child process killed and reaped on drop, so a failing test leaves nothing running.
struct Guarded(Option<Child>);

impl Guarded {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is still owned")
    }

    /// Waits up to `timeout` for the exit; `None` if it is still running.
    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                self.0 = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The demo's arguments for free ports and a data directory inside the test's directory.
fn demo_args(dir: &TestDir, mqtt: u16, modbus: u16) -> Vec<String> {
    vec![
        "--mqtt-port".into(),
        mqtt.to_string(),
        "--modbus-port".into(),
        modbus.to_string(),
        "--data-dir".into(),
        dir.join("demo-data").display().to_string(),
    ]
}

/// The count in the demo's last line, `demo stopped: N MQTT messages received ...`.
fn messages_received(stdout: &str) -> Option<u64> {
    let rest = stdout.split("demo stopped: ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn the_demo_runs_for_its_duration_shows_where_to_subscribe_and_receives_messages() {
    let dir = TestDir::new();
    let (mqtt, modbus) = (free_port(), free_port());
    let mut args = demo_args(&dir, mqtt, modbus);
    args.extend(["--duration".to_owned(), "4".to_owned()]);
    let out = run_cli_with(&bin(), &args, &[], Duration::from_secs(40))
        .expect("the demo finishes by itself");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("mosquitto_sub -h 127.0.0.1 -p {mqtt} ")),
        "the subscribe hint names the broker port {mqtt}:\n{stdout}"
    );
    let received = messages_received(&stdout)
        .unwrap_or_else(|| panic!("no final count in the demo's output:\n{stdout}"));
    assert!(
        received > 0,
        "the demo's subscriber received messages:\n{stdout}"
    );
    // Into a pipe the status is one plain line per second, not a line redrawn with `\r`.
    assert!(!stdout.contains('\r'), "no carriage returns:\n{stdout:?}");
    assert!(
        stdout
            .lines()
            .filter(|l| l.starts_with('[') && l.contains("s] devices "))
            .count()
            >= 2,
        "one status line per second:\n{stdout}"
    );
}

#[test]
fn the_demo_stops_cleanly_on_sigint() {
    let dir = TestDir::new();
    let (mqtt, modbus) = (free_port(), free_port());
    let stdout_path = dir.join("demo.out");
    let stdout = File::create(&stdout_path).expect("stdout file");
    let stderr = File::create(dir.join("demo.err")).expect("stderr file");
    let child = Command::new(bin())
        .args(demo_args(&dir, mqtt, modbus))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("the demo starts");
    let mut demo = Guarded(Some(child));
    let pid = demo.child().id();
    let output = || std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let errors = || std::fs::read_to_string(dir.join("demo.err")).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(30);
    while !output().contains("edge-agent demo is running") {
        assert!(
            demo.child().try_wait().expect("try_wait").is_none(),
            "the demo exited early:\n{}\n{}",
            output(),
            errors()
        );
        assert!(
            Instant::now() < deadline,
            "the demo did not start:\n{}\n{}",
            output(),
            errors()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));

    // As Ctrl-C in a terminal would. The child is not reaped yet, so the pid is still its own.
    let kill = Command::new("sh")
        .arg("-c")
        .arg("kill -INT \"$1\"")
        .arg("sh")
        .arg(pid.to_string())
        .status()
        .expect("sh runs kill");
    assert!(kill.success(), "kill -INT {pid}");
    let status = demo
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the demo ignored SIGINT for 10 s:\n{}\n{}",
                output(),
                errors()
            )
        });
    assert_eq!(
        status.code(),
        Some(0),
        "the demo exits 0 on Ctrl-C ({status}):\n{}\n{}",
        output(),
        errors()
    );
    assert!(
        output().contains("demo stopped"),
        "the demo reports its stop:\n{}",
        output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_publishes_the_opcua_simulators_tags_next_to_the_modbus_plcs() {
    let dir = TestDir::new();
    let (mqtt, modbus, opcua) = (free_port(), free_port(), free_port());
    let args: Vec<String> = vec![
        "--mqtt-port".into(),
        mqtt.to_string(),
        "--modbus-port".into(),
        modbus.to_string(),
        "--opcua-port".into(),
        opcua.to_string(),
        "--data-dir".into(),
        dir.join("demo-data").display().to_string(),
        "--duration".into(),
        "20".into(),
    ];
    let demo = tokio::task::spawn_blocking(move || {
        run_cli_with(&bin(), &args, &[], Duration::from_secs(90))
    });
    // The embedded broker comes up within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let collector = loop {
        match Collector::start(mqtt, "demo-ua", &[&format!("{ROOT}/#")]).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("the demo's broker did not come up: {e:#}"),
        }
    };
    collector
        .wait_for(
            |m| {
                let has = |t: &str| m.iter().any(|x| x.topic == t);
                has(&format!("{ROOT}/filler_ua/good_count"))
                    && has(&format!("{ROOT}/filler_ua/work_order"))
                    && has(&format!("{ROOT}/filler/good_count"))
            },
            Duration::from_secs(30),
        )
        .await
        .expect("both simulators' tags arrive");
    let out = demo.await.expect("demo task").expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("opc.tcp://127.0.0.1:{opcua}/")),
        "{stdout}"
    );
}
