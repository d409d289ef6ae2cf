//! `[admin]`: the local HTTP endpoint for health checks and metrics (`/live`, `/ready`,
//! `/metrics`) and the technician's console (the page at `/` and its JSON API under
//! `/api/v1`). Off unless configured; a loopback address is the default when it is on, so a
//! gateway never exposes it to the plant network by accident. Bound to any other address it
//! needs users (a file of password hashes): there is no default password.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::Diagnostics;
use crate::gateway::resolve;
use crate::reader::{Span, TableReader, Val};
use crate::secret::{SecretSource, UnresolvedSecrets};

/// `[admin]` (optional as a whole; without it no admin endpoint listens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// `listen` (default `127.0.0.1:9900`): the address and port of the admin endpoint, as
    /// `ip:port`. Port 0 takes any free port (the chosen one is logged). An address other
    /// than loopback needs `users_file`, unless only the probes are served
    /// (`console = false` with `open_probes = true`).
    pub listen: SocketAddr,
    /// `console` (default true): serve the page and its JSON API.
    pub console: bool,
    /// `edit` (default false): the page may change the board config (check, apply, roll back).
    pub edit: bool,
    /// `users_file`: who may sign in, one `name:role:hash` line each (made by
    /// `edge-agent console-user`). With users, every request needs credentials, on loopback too.
    pub users_file: Option<PathBuf>,
    /// The users read from `users_file`.
    pub users: Vec<ConsoleUser>,
    /// `tls_cert` and `tls_key` (PEM files, together): serve HTTPS instead of HTTP.
    pub tls: Option<ServerTls>,
    /// `open_probes` (default false): `/metrics`, `/live` and `/ready` answer without
    /// credentials even when users are configured, so Prometheus on another host can scrape.
    pub open_probes: bool,
    /// `history_bytes` (default 2 MiB): the memory all the console's trend plots share.
    pub history_bytes: u64,
}

impl AdminSettings {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:9900";
    pub const DEFAULT_HISTORY_BYTES: u64 = 2 * 1024 * 1024;

    /// Requests must carry credentials (the console and API; the probes unless `open_probes`).
    pub fn auth_required(&self) -> bool {
        !self.users.is_empty() || !self.listen.ip().is_loopback()
    }
}

/// The certificate chain and private key the console serves HTTPS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything the console offers (config apply and rollback when `edit` is on).
    Admin,
    /// Look only: every page and GET, no action that changes something.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// One line of the users file: `name:role:pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleUser {
    pub name: String,
    pub role: Role,
    pub hash: PasswordHash,
}

/// A PBKDF2-HMAC-SHA256 password hash: the password itself is never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordHash(pbkdf2-sha256, {} rounds)", self.iterations)
    }
}

impl PasswordHash {
    /// The fewest rounds a users file may name (a faster hash is refused).
    pub const MIN_ITERATIONS: u32 = 10_000;

    /// `pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX`.
    pub fn encode(&self) -> String {
        format!(
            "pbkdf2-sha256${}${}${}",
            self.iterations,
            hex(&self.salt),
            hex(&self.hash)
        )
    }
}

impl std::str::FromStr for PasswordHash {
    type Err = String;

    fn from_str(s: &str) -> Result<PasswordHash, String> {
        let mut parts = s.split('$');
        let (Some(scheme), Some(iterations), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err("a hash is pbkdf2-sha256$ITERATIONS$SALT$HASH".to_owned());
        };
        if scheme != "pbkdf2-sha256" {
            return Err(format!(
                "unknown hash scheme `{scheme}` (only pbkdf2-sha256)"
            ));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| format!("`{iterations}` is not a number of rounds"))?;
        if iterations < Self::MIN_ITERATIONS {
            return Err(format!(
                "{iterations} rounds is too fast to guess against; at least {}",
                Self::MIN_ITERATIONS
            ));
        }
        let salt = unhex(salt).ok_or("the salt is not hexadecimal")?;
        let hash = unhex(hash).ok_or("the hash is not hexadecimal")?;
        if salt.len() < 16 || hash.len() != 32 {
            return Err("the salt must be at least 16 bytes and the hash 32".to_owned());
        }
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Reads a users file; every bad line is one error (line number and why).
pub fn parse_users(text: &str) -> Result<Vec<ConsoleUser>, Vec<String>> {
    let mut users: Vec<ConsoleUser> = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let mut parts = line.splitn(3, ':');
        let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            errors.push(format!("line {n}: expected name:role:hash"));
            continue;
        };
        let role = match role {
            "admin" => Role::Admin,
            "viewer" => Role::Viewer,
            other => {
                errors.push(format!(
                    "line {n}: role `{other}` is neither `admin` nor `viewer`"
                ));
                continue;
            }
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            errors.push(format!(
                "line {n}: a user name is letters, digits, `.`, `_` and `-`"
            ));
            continue;
        }
        if users.iter().any(|u| u.name == name) {
            errors.push(format!("line {n}: user `{name}` is named twice"));
            continue;
        }
        match hash.parse::<PasswordHash>() {
            Ok(hash) => users.push(ConsoleUser {
                name: name.to_owned(),
                role,
                hash,
            }),
            Err(e) => errors.push(format!("line {n}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(users)
    } else {
        Err(errors)
    }
}

pub(crate) fn read_admin(
    cx: &mut Diagnostics<'_>,
    root: &mut TableReader<'_, '_>,
    base_dir: &Path,
    secrets: &dyn SecretSource,
) -> Option<Option<AdminSettings>> {
    let mut t = match root.table(cx, "admin") {
        Val::Present(t, _) => t,
        Val::Absent => return Some(None),
        Val::Invalid => return None,
    };
    let listen = t
        .text(cx, "listen")
        .and_then(|s, span| match s.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                cx.error(
                    span,
                    format!("`listen` must be ip:port, found `{s}`"),
                    Some(
                        "listen = \"127.0.0.1:9900\" (or \"0.0.0.0:9900\" for every interface)"
                            .to_owned(),
                    ),
                );
                None
            }
        });
    let listen_span = listen.span();
    let console = t.boolean(cx, "console").or(true);
    let edit = t.boolean(cx, "edit").or(false);
    let open_probes = t.boolean(cx, "open_probes").or(false);
    let history_bytes = t
        .integer::<u64>(cx, "history_bytes", 65_536..=268_435_456)
        .or(AdminSettings::DEFAULT_HISTORY_BYTES);
    let users_file = t.text(cx, "users_file").optional();
    let users = users_file.clone().map(|f| match f {
        None => Some(Vec::new()),
        Some((path, span)) => read_users(cx, &resolve(base_dir, path), &span, secrets),
    });
    let tls = read_tls(cx, &mut t, base_dir);
    let table_span = t.span();
    t.finish(cx);
    let default: SocketAddr = AdminSettings::DEFAULT_LISTEN.parse().ok()?;
    let settings = AdminSettings {
        listen: listen.or(default)?,
        console: console?,
        edit: edit?,
        users_file: users_file?.map(|(p, _)| resolve(base_dir, p)),
        users: users??,
        tls: tls?,
        open_probes: open_probes?,
        history_bytes: history_bytes?,
    };
    // Beyond this machine, every door needs a key: nothing may be served without one, except
    // the probes when the config says so and the console is off.
    let only_open_probes = !settings.console && settings.open_probes;
    if !settings.listen.ip().is_loopback() && settings.users.is_empty() && !only_open_probes {
        cx.error(
            &listen_span.unwrap_or(table_span),
            format!(
                "the admin endpoint listens beyond this machine ({}) but no users are configured: anyone on the network could use it",
                settings.listen
            ),
            Some("add users_file = \"/etc/edge-agent/console-users\" (lines made by `edge-agent console-user NAME`), or listen on 127.0.0.1; for Prometheus alone set console = false and open_probes = true".to_owned()),
        );
        return None;
    }
    Some(Some(settings))
}

fn read_users(
    cx: &mut Diagnostics<'_>,
    path: &Path,
    span: &Span,
    secrets: &dyn SecretSource,
) -> Option<Vec<ConsoleUser>> {
    let text = match secrets.file(path) {
        Ok(t) => t,
        Err(e) => {
            cx.error(
                span,
                format!("cannot read the users file {}: {e}", path.display()),
                Some("make it with `edge-agent console-user NAME >> FILE`".to_owned()),
            );
            return None;
        }
    };
    // The store tools read the config without secrets; they never serve the console.
    if text == UnresolvedSecrets::PLACEHOLDER {
        return Some(Vec::new());
    }
    match parse_users(&text) {
        Ok(users) if users.is_empty() => {
            cx.error(
                span,
                format!("the users file {} names no user", path.display()),
                Some("add one with `edge-agent console-user NAME >> FILE`".to_owned()),
            );
            None
        }
        Ok(users) => Some(users),
        Err(errors) => {
            cx.error(
                span,
                format!(
                    "the users file {} is not valid: {}",
                    path.display(),
                    errors.join("; ")
                ),
                Some(
                    "each line is name:role:hash as `edge-agent console-user` prints it".to_owned(),
                ),
            );
            None
        }
    }
}

fn read_tls(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    base_dir: &Path,
) -> Option<Option<ServerTls>> {
    let cert = t.text(cx, "tls_cert").optional();
    let key = t.text(cx, "tls_key").optional();
    match (cert?, key?) {
        (None, None) => Some(None),
        (Some((cert, _)), Some((key, _))) => Some(Some(ServerTls {
            cert: resolve(base_dir, cert),
            key: resolve(base_dir, key),
        })),
        (Some((_, span)), None) | (None, Some((_, span))) => {
            cx.error(
                &span,
                "`tls_cert` and `tls_key` go together",
                Some("give both PEM files, or neither for plain HTTP".to_owned()),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "pbkdf2-sha256$10000$00112233445566778899aabbccddeeff$000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn a_users_file_reads_names_roles_and_hashes_and_skips_comments() {
        let text = format!("# console users\nanna:admin:{HASH}\n\nbert:viewer:{HASH}\n");
        let users = parse_users(&text).expect("valid");
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].name, "anna");
        assert_eq!(users[0].role, Role::Admin);
        assert_eq!(users[1].role, Role::Viewer);
        assert_eq!(users[0].hash.iterations, 10_000);
        assert_eq!(users[0].hash.encode(), HASH);
    }

    #[test]
    fn every_bad_line_of_a_users_file_is_named() {
        let text = format!(
            "anna:root:{HASH}\nbert:viewer:md5$1$2$3\ncarl:admin:pbkdf2-sha256$10$00112233445566778899aabbccddeeff$00\nanna2\ndora:admin:{HASH}\ndora:viewer:{HASH}\n"
        );
        let errors = parse_users(&text).expect_err("invalid");
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].starts_with("line 1: role `root`"), "{errors:?}");
        assert!(
            errors[1].contains("unknown hash scheme `md5`"),
            "{errors:?}"
        );
        assert!(errors[2].contains("too fast"), "{errors:?}");
        assert!(errors[3].starts_with("line 4"), "{errors:?}");
        assert!(errors[4].contains("named twice"), "{errors:?}");
    }

    #[test]
    fn a_password_hash_never_prints_its_bytes() {
        let h: PasswordHash = HASH.parse().expect("valid");
        assert_eq!(
            format!("{h:?}"),
            "PasswordHash(pbkdf2-sha256, 10000 rounds)"
        );
    }
}
