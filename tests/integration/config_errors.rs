//! `check` and `run` on broken and valid configs: every error at once, with its position.

use crate::common::*;
use crate::support::agent::run_cli_with;
use crate::support::{run_cli, TestDir};

const BROKEN: &str = r#"[gateway]
id = "gw 1"
data_dir = "data"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[[northbound]]
name = "mes"
url = "http://broker:1883"

[[device]]
name = "filler"
protocol = "modbus-tcp"
host = "10.0.0.5"
poll_interval_ms = "fast"

  [[device.tag]]
  name = "temp"
  adress = "hr:1"
  type = "f32"

  [[device.tag]]
  name = "flag"
  address = "coil:3"
  type = "f32"
"#;

#[test]
fn check_lists_every_error_of_a_broken_config_with_its_position_and_exits_64() {
    let dir = TestDir::new();
    let path = dir.write_config(BROKEN);
    let out = run_cli(&bin(), &["check", "-c", path.to_str().expect("utf-8 path")]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "exit code; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    // Each mistake, at its own line and column.
    for (line, col, words) in [
        (2, 6, "id"),
        (11, 7, "mqtt"),
        (17, 20, "integer"),
        (21, 3, "adress"),
        (27, 10, "coil"),
    ] {
        let at = format!("{file}:{line}:{col}");
        assert!(
            err.contains(&at),
            "expected an error at {at} mentioning {words}; got:\n{err}"
        );
        let text = err
            .lines()
            .find(|l| l.contains(&at))
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            text.contains(words),
            "error at {at} should mention `{words}`: {text}"
        );
    }
    assert!(
        err.contains("did you mean `address`"),
        "a hint for the misspelt key:\n{err}"
    );
    // The tag that lost its address because of the misspelling is reported too.
    assert!(
        err.contains(&format!("{file}:19:")) || err.contains("missing"),
        "missing address reported:\n{err}"
    );
}

#[test]
fn run_refuses_a_broken_config_with_exit_64() {
    let dir = TestDir::new();
    let path = dir.write_config(BROKEN);
    let out = run_cli(&bin(), &["run", "-c", path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{}:21:3", path.display())));
}

#[test]
fn check_prints_devices_tags_and_the_read_plan_of_a_valid_config() {
    let dir = TestDir::new();
    let tags = vec![
        tag("a", "hr:0", "u16"),
        tag("b", "hr:1", "u32"),
        tag("c", "hr:200", "f32"),
        tag("d", "coil:0", "bool"),
        tag("e", "coil:1", "bool"),
    ];
    let cfg = config_toml(
        &dir.path().join("data"),
        1,
        "per-tag",
        "",
        &[device("press", 502, 1000, tags)],
    );
    let path = dir.write_config(&cfg);
    let out = run_cli(&bin(), &["check", "-c", path.to_str().expect("utf-8 path")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("device press"), "{text}");
    for t in ["a", "b", "c", "d", "e"] {
        assert!(
            text.contains(&format!("tag {t} ")),
            "tag {t} listed:\n{text}"
        );
    }
    // hr:0..=2 merge, hr:200 stands alone (gap 0), the coils merge: 3 requests.
    assert!(
        text.contains("read plan: 3 request(s) per scan for 5 tags"),
        "{text}"
    );
}

#[test]
fn the_demo_config_and_the_example_config_pass_check() {
    for name in ["demo.toml", "example-modbus-tcp.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../board-configs")
            .join(name);
        // The example takes its broker password from the environment, as a service would.
        let out = run_cli_with(
            &bin(),
            &["check", "-c", path.to_str().expect("utf-8 path")],
            &[("MES_MQTT_PASSWORD", "secret")],
            std::time::Duration::from_secs(60),
        )
        .expect("check runs");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A machine on an OPC UA server that names a tag the device does not have.
const OPCUA_MACHINE: &str = r#"[gateway]
id = "gw-1"
data_dir = "data"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[[northbound]]
name = "mes"
url = "mqtt://broker.invalid"

[[device]]
name = "filler_ua"
protocol = "opcua"
endpoint = "opc.tcp://plc-ua.invalid"

  [[device.tag]]
  name = "work_order"
  address = "ns=2;s=Filler.WorkOrder"

  [[device.tag]]
  name = "good_count"
  address = "ns=2;s=Filler.GoodCount"
  type = "u32"

[[machine]]
name = "filler"
device = "filler_ua"
work_order_tag = "work_order"
good_count_tag = "good_parts"
"#;

#[test]
fn check_on_a_machine_naming_a_missing_opcua_tag_exits_64_with_its_position_and_the_tags_that_exist(
) {
    let dir = TestDir::new();
    let path = dir.write_config(OPCUA_MACHINE);
    let out = run_cli(&bin(), &["check", "-c", path.to_str().expect("utf-8 path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{err}");
    let at = format!("{}:31:18", path.display());
    let line = err
        .lines()
        .find(|l| l.contains(&at))
        .unwrap_or_else(|| panic!("no error at {at}:\n{err}"));
    assert!(
        line.contains("unknown tag `good_parts` on device `filler_ua`"),
        "{line}"
    );
    let hint = err
        .lines()
        .skip_while(|l| !l.contains(&at))
        .find_map(|l| l.trim().strip_prefix("hint: "))
        .unwrap_or_else(|| panic!("no hint after the error:\n{err}"));
    assert!(
        hint.contains("`work_order`") && hint.contains("`good_count`"),
        "the hint lists the device's tags: {hint}"
    );
}
