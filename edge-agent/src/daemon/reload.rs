//! What a config reload (SIGHUP) may change while the agent runs, decided without I/O: device
//! pollers are swapped live, while the store, the northbounds' publishers and the MES rules
//! keep running untouched, so buffered data is neither lost nor reordered. Changes to those
//! need a restart and make the whole reload refused, so the running config is always exactly
//! one file's content.

use edge_config::{Config, Device};

/// How the devices of the running config become those of the new one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReloadPlan {
    /// Devices only the new config has: start polling them.
    pub added: Vec<Device>,
    /// Devices only the old config has: stop polling them (their read samples are kept).
    pub removed: Vec<String>,
    /// Devices in both whose settings or tags differ: stop the old poller, start a new one.
    pub changed: Vec<Device>,
    /// Devices in both with identical settings: left running.
    pub unchanged: Vec<String>,
}

impl ReloadPlan {
    /// The new config is the running one: nothing to do.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Why a valid new config cannot be applied without a restart: the sections that differ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("these sections changed and need `systemctl restart edge-agent` (a reload applies only [[device]] changes): {}", .sections.join(", "))]
pub struct NeedsRestart {
    pub sections: Vec<&'static str>,
}

/// Compares the running config with a valid new one.
pub fn plan(old: &Config, new: &Config) -> Result<ReloadPlan, NeedsRestart> {
    let mut sections = Vec::new();
    if old.gateway != new.gateway {
        sections.push("[gateway]");
    }
    if old.store != new.store {
        sections.push("[store]");
    }
    if old.northbounds != new.northbounds {
        sections.push("[[northbound]]");
    }
    if old.machines != new.machines {
        sections.push("[[machine]]");
    }
    if old.admin != new.admin {
        sections.push("[admin]");
    }
    // A machine reads the samples of its device: removing or changing that device under
    // running MES rules would break their counters and states.
    for m in &old.machines {
        let before = old.devices.iter().find(|d| d.name == m.device);
        let after = new.devices.iter().find(|d| d.name == m.device);
        if before != after && !sections.contains(&"[[device]] of a [[machine]]") {
            sections.push("[[device]] of a [[machine]]");
        }
    }
    if !sections.is_empty() {
        return Err(NeedsRestart { sections });
    }
    let mut p = ReloadPlan::default();
    for d in &new.devices {
        match old.devices.iter().find(|o| o.name == d.name) {
            None => p.added.push(d.clone()),
            Some(o) if o != d => p.changed.push(d.clone()),
            Some(_) => p.unchanged.push(d.name.clone()),
        }
    }
    for o in &old.devices {
        if !new.devices.iter().any(|d| d.name == o.name) {
            p.removed.push(o.name.clone());
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_config::SecretSource;
    use std::path::Path;

    struct NoSecrets;
    impl SecretSource for NoSecrets {
        fn env(&self, _: &str) -> Option<String> {
            None
        }
        fn file(&self, path: &Path) -> std::io::Result<String> {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                path.display().to_string(),
            ))
        }
    }

    const HEAD: &str = r#"
[gateway]
id = "gw"
data_dir = "/var/lib/edge-agent"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[[northbound]]
name = "mes"
url = "mqtt://127.0.0.1:1883"
"#;

    fn device(name: &str, port: u16, poll_ms: u64) -> String {
        format!(
            "[[device]]\nname = \"{name}\"\nprotocol = \"modbus-tcp\"\nhost = \"127.0.0.1\"\nport = {port}\npoll_interval_ms = {poll_ms}\n  [[device.tag]]\n  name = \"count\"\n  address = \"hr:0\"\n  type = \"u16\"\n"
        )
    }

    fn cfg(body: &str) -> Config {
        edge_config::parse(&format!("{HEAD}{body}"), Path::new("t.toml"), &NoSecrets)
            .unwrap_or_else(|e| panic!("test config is valid: {e}"))
    }

    #[test]
    fn the_same_config_needs_nothing() {
        let a = cfg(&device("a", 502, 100));
        let p = plan(&a, &a.clone()).expect("reloadable");
        assert!(p.is_empty());
        assert_eq!(p.unchanged, vec!["a".to_owned()]);
    }

    #[test]
    fn devices_are_sorted_into_added_removed_changed_and_unchanged() {
        let old = cfg(&[
            device("a", 502, 100),
            device("b", 502, 100),
            device("c", 502, 100),
        ]
        .concat());
        let new = cfg(&[
            device("a", 502, 100),
            device("c", 503, 100),
            device("d", 502, 50),
        ]
        .concat());
        let p = plan(&old, &new).expect("reloadable");
        assert_eq!(
            p.added.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["d"]
        );
        assert_eq!(p.removed, ["b"]);
        assert_eq!(
            p.changed
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(p.unchanged, ["a"]);
    }

    #[test]
    fn a_changed_northbound_refuses_the_reload_and_names_the_section() {
        let old = cfg(&device("a", 502, 100));
        let src = format!("{HEAD}{}", device("a", 502, 100)).replace("1883", "1884");
        let new = edge_config::parse(&src, Path::new("t.toml"), &NoSecrets).expect("valid");
        let e = plan(&old, &new).expect_err("needs a restart");
        assert_eq!(e.sections, ["[[northbound]]"]);
        assert!(e.to_string().contains("systemctl restart edge-agent"));
    }

    #[test]
    fn every_section_that_needs_a_restart_is_named_at_once() {
        let old = cfg(&device("a", 502, 100));
        let src = format!(
            "{HEAD}[store]\nmax_disk_mb = 10\n[admin]\n{}",
            device("a", 502, 100)
        )
        .replace("id = \"gw\"", "id = \"gw2\"");
        let new = edge_config::parse(&src, Path::new("t.toml"), &NoSecrets).expect("valid");
        let e = plan(&old, &new).expect_err("needs a restart");
        // The gateway id is part of the northbound's default client id, so it changes too.
        assert_eq!(
            e.sections,
            ["[gateway]", "[store]", "[[northbound]]", "[admin]"]
        );
    }
}
