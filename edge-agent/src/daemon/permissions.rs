//! File permissions a plant's IT review asks for: keys and password files readable only by the
//! agent, and a config nobody else may change. Warnings, printed by `check` and logged at
//! start; the agent still runs (the file may be fixed while it does).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use edge_config::{Config, Protocol};
use edge_opcua::Identity;

/// What a file holds, which decides the permissions it should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A private key or a password: readable by its owner only.
    Secret,
    /// The board config: it decides what is written to PLCs, so not writable by others.
    Config,
}

/// One file the config depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Who names it, e.g. `northbound mes: client_key_file`.
    pub what: String,
    pub path: PathBuf,
    pub kind: Kind,
}

/// The config file itself, and every key and password file it names.
pub fn files(cfg: &Config, config_path: &Path) -> Vec<Checked> {
    let mut out = vec![Checked {
        what: "config".to_owned(),
        path: config_path.to_owned(),
        kind: Kind::Config,
    }];
    let mut secret = |what: String, path: &Path| {
        out.push(Checked {
            what,
            path: path.to_owned(),
            kind: Kind::Secret,
        })
    };
    for nb in &cfg.northbounds {
        if let Some(file) = nb
            .credentials
            .as_ref()
            .and_then(|c| c.password_file.as_ref())
        {
            secret(format!("northbound {}: password_file", nb.name), file);
        }
        if let Some((_, key)) = nb.tls.as_ref().and_then(|t| t.client_cert.as_ref()) {
            secret(format!("northbound {}: client_key_file", nb.name), key);
        }
    }
    for dev in &cfg.devices {
        let Protocol::OpcUa(ua) = &dev.protocol else {
            continue;
        };
        if let Some(file) = &ua.password_file {
            secret(format!("device {}: password_file", dev.name), file);
        }
        if let Identity::X509 { key, .. } = &ua.identity {
            secret(format!("device {}: user_key_file", dev.name), key);
        }
    }
    out
}

/// The warning for one file with this `mode`, or none. `owned_by_agent`: the file belongs to
/// the user running the agent. A secret owned by someone else (`root:edge-agent`, mode 0640)
/// is read by the agent through its group, so only what others can read is wrong there.
pub fn warning(file: &Checked, mode: u32, owned_by_agent: bool) -> Option<String> {
    let path = file.path.display();
    let mode = mode & 0o7777;
    match file.kind {
        Kind::Secret => {
            let group = owned_by_agent && mode & 0o040 != 0;
            let others = mode & 0o004 != 0;
            let who = match (group, others) {
                (false, false) => return None,
                (true, false) => "its group",
                (false, true) => "others",
                (true, true) => "group and others",
            };
            let fix = if owned_by_agent {
                format!("chmod 600 {path}")
            } else {
                format!("chmod o-rwx {path}")
            };
            Some(format!(
                "{}: {path} is readable by {who} (mode {mode:04o}); run `{fix}`",
                file.what
            ))
        }
        Kind::Config if mode & 0o002 != 0 => Some(format!(
            "{}: {path} is writable by others (mode {mode:04o}), so anyone on this machine can change what the gateway writes to PLCs; run `chmod o-w {path}`",
            file.what
        )),
        Kind::Config => None,
    }
}

/// The permission warnings of this config on this machine. A file that cannot be looked at
/// is left to the warnings and errors about reading it.
pub fn warnings(cfg: &Config, config_path: &Path) -> Vec<String> {
    // The agent's effective user owns its /proc/self (Linux); elsewhere every file is taken
    // as the agent's own, the stricter reading.
    let agent_uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    files(cfg, config_path)
        .iter()
        .filter_map(|file| {
            let meta = std::fs::metadata(&file.path).ok()?;
            let owned = agent_uid.is_none_or(|uid| uid == meta.uid());
            warning(file, meta.permissions().mode(), owned)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Checked {
        Checked {
            what: "northbound mes: client_key_file".into(),
            path: "/etc/edge-agent/gw.key".into(),
            kind: Kind::Secret,
        }
    }

    fn config() -> Checked {
        Checked {
            what: "config".into(),
            path: "/etc/edge-agent/edge-agent.toml".into(),
            kind: Kind::Config,
        }
    }

    #[test]
    fn a_key_readable_by_its_owner_only_is_fine() {
        assert_eq!(warning(&secret(), 0o100600, true), None);
        assert_eq!(warning(&secret(), 0o400, true), None);
    }

    #[test]
    fn a_world_readable_key_is_named_with_its_mode_and_the_fix() {
        assert_eq!(
            warning(&secret(), 0o100644, true).as_deref(),
            Some("northbound mes: client_key_file: /etc/edge-agent/gw.key is readable by group and others (mode 0644); run `chmod 600 /etc/edge-agent/gw.key`")
        );
        let w = warning(&secret(), 0o604, true).expect("others read");
        assert!(w.contains("readable by others (mode 0604)"), "{w}");
    }

    #[test]
    fn a_group_readable_key_of_the_agent_user_is_a_warning() {
        let w = warning(&secret(), 0o640, true).expect("group read");
        assert!(w.contains("readable by its group (mode 0640)"), "{w}");
        assert!(w.ends_with("run `chmod 600 /etc/edge-agent/gw.key`"), "{w}");
    }

    #[test]
    fn a_key_given_to_the_agent_through_its_group_is_fine_unless_others_read_it() {
        // root:edge-agent 0640: chmod 600 would lock the agent out.
        assert_eq!(warning(&secret(), 0o640, false), None);
        let w = warning(&secret(), 0o644, false).expect("others read");
        assert!(w.contains("readable by others (mode 0644)"), "{w}");
        assert!(
            w.ends_with("run `chmod o-rwx /etc/edge-agent/gw.key`"),
            "{w}"
        );
    }

    #[test]
    fn a_config_is_warned_about_only_when_others_can_write_it() {
        assert_eq!(warning(&config(), 0o644, true), None);
        assert_eq!(warning(&config(), 0o664, true), None);
        let w = warning(&config(), 0o100666, false).expect("others write");
        assert!(
            w.starts_with(
                "config: /etc/edge-agent/edge-agent.toml is writable by others (mode 0666)"
            ),
            "{w}"
        );
        assert!(
            w.ends_with("`chmod o-w /etc/edge-agent/edge-agent.toml`"),
            "{w}"
        );
    }

    #[test]
    fn files_on_disk_are_checked_by_their_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("gw.key");
        std::fs::write(&key, "key").expect("write");
        let conf = dir.path().join("edge-agent.toml");
        let pw = dir.path().join("ua.pass");
        std::fs::write(&pw, "pw\n").expect("write");
        let src = format!(
            r#"[gateway]
id = "gw-1"
data_dir = "data"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[[northbound]]
name = "mes"
url = "mqtts://127.0.0.1:8883"
ca_file = "ca.pem"
client_cert_file = "gw.crt"
client_key_file = "{key}"

[[device]]
name = "ua"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
username = "edge"
password_file = "{pw}"

[[device.tag]]
name = "t"
address = "ns=2;s=T"
"#,
            key = key.display(),
            pw = pw.display(),
        );
        std::fs::write(&conf, src).expect("write");
        let cfg = edge_config::load(&conf).expect("config loads");
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };

        set(&key, 0o600);
        set(&pw, 0o600);
        set(&conf, 0o644);
        assert_eq!(warnings(&cfg, &conf), Vec::<String>::new());

        set(&key, 0o644);
        set(&pw, 0o640);
        set(&conf, 0o666);
        let got = warnings(&cfg, &conf);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(
            got[0].starts_with("config: ") && got[0].contains("(mode 0666)"),
            "{got:#?}"
        );
        assert!(
            got[1].starts_with("northbound mes: client_key_file: ")
                && got[1].contains("(mode 0644)")
                && got[1].contains("chmod 600"),
            "{got:#?}"
        );
        assert!(
            got[2].starts_with("device ua: password_file: ") && got[2].contains("(mode 0640)"),
            "{got:#?}"
        );
    }
}
