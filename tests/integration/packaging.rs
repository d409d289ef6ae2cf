//! What the package installs agrees with the board configs it supports: every serial port a
//! board config names can be opened under the systemd unit's device allow-list.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `DeviceAllow=` specifiers of the unit file that grant read and write.
fn device_allow_entries(unit: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.trim().strip_prefix("DeviceAllow="))
        .filter_map(|value| {
            let mut parts = value.split_whitespace();
            let spec = parts.next()?;
            let access = parts.next().unwrap_or("rwm");
            (access.contains('r') && access.contains('w')).then(|| spec.to_string())
        })
        .collect()
}

/// fnmatch without brackets: what systemd applies to `char-` group names.
fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_matches(&pattern[1..], name)
                || (!name.is_empty() && glob_matches(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_matches(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// The /proc/devices groups a serial path of a board config can belong to. A node name is its
/// driver's name plus a number (`ttySC1` → `ttySC`); udev symlinks are listed with what they
/// point to on the boards that create them, so a new alias fails here until someone looks up
/// its driver.
fn driver_groups(path: &str) -> Vec<String> {
    let node = path.strip_prefix("/dev/").unwrap_or(path);
    match node {
        // Revolution Pi's udev rule: the PL011 (ttyAMA0) or an 8250 (ttyS0), by model.
        "ttyRS485" => vec!["ttyAMA".into(), "ttyS".into()],
        _ => {
            let name = node.trim_end_matches(|c: char| c.is_ascii_digit());
            assert!(
                name.len() < node.len() && !name.contains('/'),
                "{path}: not a kernel tty name; add the driver group of this alias to the test"
            );
            vec![name.to_string()]
        }
    }
}

fn allowed(entries: &[String], path: &str, group: &str) -> bool {
    entries.iter().any(|spec| match spec.strip_prefix("char-") {
        Some(pattern) => glob_matches(pattern.as_bytes(), group.as_bytes()),
        None => spec == path,
    })
}

#[test]
fn every_serial_port_of_every_board_config_is_allowed_by_the_systemd_unit() {
    let root = repo_root();
    let unit = std::fs::read_to_string(root.join("systemd/edge-agent.service")).expect("unit");
    let entries = device_allow_entries(&unit);
    assert!(
        unit.contains("DevicePolicy=closed"),
        "the allow-list is in force"
    );

    let mut configs: Vec<PathBuf> = std::fs::read_dir(root.join("board-configs"))
        .expect("board-configs")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.push(root.join("systemd/edge-agent.toml"));

    let mut checked = 0;
    for config in &configs {
        let text = std::fs::read_to_string(config).expect("config");
        let doc: toml::Table = toml::from_str(&text).expect("board config is TOML");
        let ports = doc
            .get("board")
            .and_then(|b| b.get("serial"))
            .and_then(|s| s.as_array())
            .cloned()
            .unwrap_or_default();
        for port in ports {
            let path = port
                .get("path")
                .and_then(|p| p.as_str())
                .expect("a serial port has a path");
            for group in driver_groups(path) {
                assert!(
                    allowed(&entries, path, &group),
                    "{}: {path} (driver group {group}) is not covered by any DeviceAllow= of \
                     the unit ({entries:?})",
                    config.display()
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 6,
        "the board configs name their serial ports ({checked})"
    );
}

#[test]
fn the_device_allow_glob_matches_as_systemd_does() {
    assert!(glob_matches(b"ttyM*", b"ttyM"));
    assert!(glob_matches(b"ttyM*", b"ttyMI"));
    assert!(!glob_matches(b"ttyS", b"ttySC"));
    assert!(glob_matches(b"tty?C", b"ttySC"));
    assert!(!glob_matches(b"ttyM*", b"ttyAMA"));
}
