//! Who is asking, and may they: password checks (PBKDF2-HMAC-SHA256, the hash from the users
//! file), sign-in sessions behind an `HttpOnly; SameSite=Strict` cookie, HTTP Basic for
//! scripts, and the cross-site checks every request that changes something passes (its
//! `Origin`, `Sec-Fetch-Site`, and the session's CSRF token).
//!
//! On loopback without users nobody signs in, but a page on another site open in the
//! technician's browser could still send requests to 127.0.0.1: the `Host` must then name
//! this machine (against DNS rebinding) and POSTs carry the process's CSRF token.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edge_config::{hex, AdminSettings, ConsoleUser, PasswordHash, Role};
use ring::rand::{SecureRandom, SystemRandom};

use super::http::Request;

/// A session ends after this long without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at once; signing in beyond it ends the one idle longest.
const MAX_SESSIONS: usize = 64;
/// Failed sign-ins (and Basic checks) allowed in [`FAILURE_WINDOW`] before every further
/// attempt is refused until the window has passed: guessing stays slow.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a checked `Authorization` header is remembered, so a script's every request does
/// not pay for PBKDF2 again.
const BASIC_REMEMBERED: Duration = Duration::from_secs(300);
/// Rounds for new hashes (OWASP's advice for PBKDF2-HMAC-SHA256).
pub const NEW_HASH_ITERATIONS: u32 = 600_000;

pub const SESSION_COOKIE: &str = "edge_session";

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `None` when nobody needs to sign in (loopback without users).
    pub user: Option<String>,
    pub role: Role,
    /// What its POSTs must carry in `X-CSRF-Token`.
    pub csrf: String,
    /// Authenticated by an `Authorization` header: a browser never sends one unasked to
    /// another site, so its POSTs need no CSRF token.
    pub basic: bool,
}

/// Why a request is not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No or wrong credentials (401).
    Unauthenticated(&'static str),
    /// Known, but not allowed (403).
    Forbidden(&'static str),
    /// Too many failed attempts lately (429).
    Throttled,
}

#[derive(Debug)]
struct Session {
    user: String,
    role: Role,
    csrf: String,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct Failures {
    since: Option<Instant>,
    count: u32,
}

/// The console's users, sessions and tokens.
#[derive(Debug)]
pub struct Auth {
    users: Vec<ConsoleUser>,
    required: bool,
    /// The CSRF token of the requests that need no sign-in.
    open_csrf: String,
    sessions: Mutex<HashMap<String, Session>>,
    /// SHA-256 of an `Authorization` header checked lately, and whose it was.
    basic: Mutex<HashMap<Vec<u8>, (String, Role, Instant)>>,
    failures: Mutex<Failures>,
    rng: SystemRandom,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// 32 random bytes, hex.
fn token(rng: &SystemRandom) -> String {
    let mut bytes = [0u8; 32];
    // The system's random source failing leaves no safe way on; all zeros would be guessable.
    if rng.fill(&mut bytes).is_err() {
        panic!("the system random number generator failed");
    }
    hex(&bytes)
}

/// Compares without leaking where two strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new hash of `password` with a random salt.
pub fn hash_password(password: &str, iterations: u32) -> PasswordHash {
    let rng = SystemRandom::new();
    let mut salt = vec![0u8; 16];
    if rng.fill(&mut salt).is_err() {
        panic!("the system random number generator failed");
    }
    let mut hash = vec![0u8; 32];
    let rounds = NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &mut hash,
    );
    PasswordHash {
        iterations,
        salt,
        hash,
    }
}

/// Whether `password` matches `hash`.
pub fn verify_password(hash: &PasswordHash, password: &str) -> bool {
    let Some(rounds) = NonZeroU32::new(hash.iterations) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &hash.salt,
        password.as_bytes(),
        &hash.hash,
    )
    .is_ok()
}

impl Auth {
    pub fn new(settings: &AdminSettings) -> Auth {
        let rng = SystemRandom::new();
        Auth {
            users: settings.users.clone(),
            required: settings.auth_required(),
            open_csrf: token(&rng),
            sessions: Mutex::new(HashMap::new()),
            basic: Mutex::new(HashMap::new()),
            failures: Mutex::new(Failures::default()),
            rng,
        }
    }

    /// Requests must carry credentials.
    pub fn required(&self) -> bool {
        self.required
    }

    fn throttled(&self) -> bool {
        let f = lock(&self.failures);
        matches!(f.since, Some(s) if s.elapsed() < FAILURE_WINDOW && f.count >= MAX_FAILURES)
    }

    fn failed(&self) {
        let mut f = lock(&self.failures);
        match f.since {
            Some(s) if s.elapsed() < FAILURE_WINDOW => f.count += 1,
            _ => {
                f.since = Some(Instant::now());
                f.count = 1;
            }
        }
    }

    /// Checks a user's password: the user, or why not.
    pub fn check_password(&self, user: &str, password: &str) -> Result<&ConsoleUser, Denied> {
        if self.throttled() {
            return Err(Denied::Throttled);
        }
        let found = self.users.iter().find(|u| u.name == user);
        // An unknown user costs the same time as a wrong password.
        let ok = match found {
            Some(u) => verify_password(&u.hash, password),
            None => {
                if let Some(any) = self.users.first() {
                    let _ = verify_password(&any.hash, password);
                }
                false
            }
        };
        match found {
            Some(u) if ok => Ok(u),
            _ => {
                self.failed();
                Err(Denied::Unauthenticated("wrong user or password"))
            }
        }
    }

    /// Signs `user` in: the new session's cookie value and its principal.
    pub fn sign_in(&self, user: &ConsoleUser) -> (String, Principal) {
        let id = token(&self.rng);
        let csrf = token(&self.rng);
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.last_used.elapsed() < SESSION_IDLE);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                sessions.remove(&k);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                user: user.name.clone(),
                role: user.role,
                csrf: csrf.clone(),
                last_used: Instant::now(),
            },
        );
        let p = Principal {
            user: Some(user.name.clone()),
            role: user.role,
            csrf,
            basic: false,
        };
        (id, p)
    }

    /// Ends the session of this request, if it has one.
    pub fn sign_out(&self, req: &Request) {
        if let Some(id) = req.cookie(SESSION_COOKIE) {
            lock(&self.sessions).remove(id);
        }
    }

    /// Who sent `req`: its session, its `Authorization: Basic`, or nobody needed.
    pub fn principal(&self, req: &Request) -> Result<Principal, Denied> {
        if !self.required {
            return Ok(Principal {
                user: None,
                role: Role::Admin,
                csrf: self.open_csrf.clone(),
                basic: false,
            });
        }
        if let Some(id) = req.cookie(SESSION_COOKIE) {
            let mut sessions = lock(&self.sessions);
            if let Some(s) = sessions.get_mut(id) {
                if s.last_used.elapsed() < SESSION_IDLE {
                    s.last_used = Instant::now();
                    return Ok(Principal {
                        user: Some(s.user.clone()),
                        role: s.role,
                        csrf: s.csrf.clone(),
                        basic: false,
                    });
                }
                sessions.remove(id);
            }
        }
        match req.header("authorization") {
            Some(value) => self.basic(value),
            None => Err(Denied::Unauthenticated("sign in first")),
        }
    }

    fn basic(&self, value: &str) -> Result<Principal, Denied> {
        let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes())
            .as_ref()
            .to_vec();
        {
            let mut cache = lock(&self.basic);
            cache.retain(|_, (_, _, at)| at.elapsed() < BASIC_REMEMBERED);
            if let Some((user, role, _)) = cache.get(&digest) {
                return Ok(Principal {
                    user: Some(user.clone()),
                    role: *role,
                    csrf: String::new(),
                    basic: true,
                });
            }
        }
        let Some((user, password)) = value
            .strip_prefix("Basic ")
            .and_then(decode_base64)
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
        else {
            return Err(Denied::Unauthenticated(
                "the Authorization header is not Basic user:password",
            ));
        };
        let u = self.check_password(&user, &password)?;
        let (name, role) = (u.name.clone(), u.role);
        let mut cache = lock(&self.basic);
        if cache.len() < MAX_SESSIONS {
            cache.insert(digest, (name.clone(), role, Instant::now()));
        }
        Ok(Principal {
            user: Some(name),
            role,
            csrf: String::new(),
            basic: true,
        })
    }
}

/// The checks of a request that changes something: sent by the page itself (same origin, the
/// CSRF token), by a signed-in admin.
pub fn check_change(req: &Request, p: &Principal, tls: bool) -> Result<(), Denied> {
    cross_site(req, tls)?;
    if !p.basic {
        let sent = req.header("x-csrf-token").unwrap_or("");
        if p.csrf.is_empty() || !same(sent.as_bytes(), p.csrf.as_bytes()) {
            return Err(Denied::Forbidden(
                "missing or wrong X-CSRF-Token (take it from GET /api/v1/session)",
            ));
        }
    }
    Ok(())
}

/// Refuses a request another site's page made the browser send.
pub fn cross_site(req: &Request, tls: bool) -> Result<(), Denied> {
    if let Some(site) = req.header("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err(Denied::Forbidden("cross-site request refused"));
        }
    }
    if let Some(origin) = req.header("origin") {
        let scheme = if tls { "https" } else { "http" };
        let own = req.header("host").map(|h| format!("{scheme}://{h}"));
        if own.as_deref() != Some(origin) {
            return Err(Denied::Forbidden("cross-site request refused"));
        }
    }
    Ok(())
}

/// Whether `host` (a `Host` header) names this machine: what a page of another site reaching
/// 127.0.0.1 through a rebound DNS name cannot send.
pub fn host_is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Standard base64 (RFC 4648, padding optional, ASCII whitespace ignored), as HTTP Basic
/// and WebDriver screenshots send it.
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'\r' | b'\n' | b' ' | b'\t' => continue,
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::http::parse_head;

    fn settings(users: Vec<ConsoleUser>, listen: &str) -> AdminSettings {
        AdminSettings {
            listen: listen.parse().expect("addr"),
            console: true,
            edit: false,
            users_file: None,
            users,
            tls: None,
            open_probes: false,
            history_bytes: AdminSettings::DEFAULT_HISTORY_BYTES,
        }
    }

    fn user(name: &str, role: Role, password: &str) -> ConsoleUser {
        ConsoleUser {
            name: name.to_owned(),
            role,
            hash: hash_password(password, PasswordHash::MIN_ITERATIONS),
        }
    }

    fn request(head: &str) -> Request {
        parse_head(head.as_bytes()).expect("a request")
    }

    #[test]
    fn a_password_verifies_against_its_hash_and_no_other() {
        let h = hash_password("s3cret horse", PasswordHash::MIN_ITERATIONS);
        assert!(verify_password(&h, "s3cret horse"));
        assert!(!verify_password(&h, "s3cret hors"));
        let again = hash_password("s3cret horse", PasswordHash::MIN_ITERATIONS);
        assert_ne!(h.salt, again.salt, "every hash has its own salt");
    }

    #[test]
    fn a_session_cookie_or_basic_credentials_let_a_user_in_and_nothing_else_does() {
        let auth = Auth::new(&settings(
            vec![user("anna", Role::Admin, "pw-anna")],
            "0.0.0.0:9900",
        ));
        assert!(auth.required());
        let none = request("GET /api/v1/overview HTTP/1.1\r\nHost: gw:9900\r\n\r\n");
        assert!(matches!(
            auth.principal(&none),
            Err(Denied::Unauthenticated(_))
        ));
        let forged = request("GET / HTTP/1.1\r\nCookie: edge_session=abc\r\n\r\n");
        assert!(auth.principal(&forged).is_err());

        let u = auth
            .check_password("anna", "pw-anna")
            .expect("right password");
        let (id, p) = auth.sign_in(&u.clone());
        let with = request(&format!(
            "GET / HTTP/1.1\r\nCookie: a=b; edge_session={id}\r\n\r\n"
        ));
        assert_eq!(auth.principal(&with).expect("signed in"), p);
        auth.sign_out(&with);
        assert!(auth.principal(&with).is_err(), "signed out");

        // anna:pw-anna
        let basic = request("GET / HTTP/1.1\r\nAuthorization: Basic YW5uYTpwdy1hbm5h\r\n\r\n");
        let p = auth.principal(&basic).expect("basic");
        assert!(p.basic);
        assert_eq!(p.user.as_deref(), Some("anna"));
        // anna:wrong
        let wrong = request("GET / HTTP/1.1\r\nAuthorization: Basic YW5uYTp3cm9uZw==\r\n\r\n");
        assert!(matches!(
            auth.principal(&wrong),
            Err(Denied::Unauthenticated(_))
        ));
    }

    #[test]
    fn guessing_is_throttled_after_ten_failures() {
        let auth = Auth::new(&settings(
            vec![user("anna", Role::Admin, "pw")],
            "0.0.0.0:1",
        ));
        for _ in 0..MAX_FAILURES {
            assert!(matches!(
                auth.check_password("anna", "guess"),
                Err(Denied::Unauthenticated(_))
            ));
        }
        assert_eq!(
            auth.check_password("anna", "pw").map(|u| u.name.clone()),
            Err(Denied::Throttled),
            "even the right password waits out the window"
        );
    }

    #[test]
    fn a_change_needs_the_csrf_token_and_the_pages_own_origin() {
        let auth = Auth::new(&settings(Vec::new(), "127.0.0.1:9900"));
        let p = auth
            .principal(&request("GET / HTTP/1.1\r\n\r\n"))
            .expect("open");
        let good = request(&format!(
            "POST /api/v1/config/apply HTTP/1.1\r\nHost: 127.0.0.1:9900\r\nOrigin: http://127.0.0.1:9900\r\nX-CSRF-Token: {}\r\n\r\n",
            p.csrf
        ));
        assert_eq!(check_change(&good, &p, false), Ok(()));
        let no_token = request(
            "POST /x HTTP/1.1\r\nHost: 127.0.0.1:9900\r\nOrigin: http://127.0.0.1:9900\r\n\r\n",
        );
        assert!(matches!(
            check_change(&no_token, &p, false),
            Err(Denied::Forbidden(_))
        ));
        let other_site = request(&format!(
            "POST /x HTTP/1.1\r\nHost: 127.0.0.1:9900\r\nOrigin: http://evil.example\r\nX-CSRF-Token: {}\r\n\r\n",
            p.csrf
        ));
        assert!(matches!(
            check_change(&other_site, &p, false),
            Err(Denied::Forbidden(_))
        ));
        let fetch_meta = request(&format!(
            "POST /x HTTP/1.1\r\nHost: 127.0.0.1:9900\r\nSec-Fetch-Site: cross-site\r\nX-CSRF-Token: {}\r\n\r\n",
            p.csrf
        ));
        assert!(check_change(&fetch_meta, &p, false).is_err());
        assert!(
            check_change(&good, &p, true).is_err(),
            "http origin on an https listener"
        );
    }

    #[test]
    fn only_names_of_this_machine_are_loopback_hosts() {
        for h in [
            "127.0.0.1:9900",
            "localhost:9900",
            "[::1]:9900",
            "localhost",
            "127.0.0.2",
        ] {
            assert!(host_is_loopback(h), "{h}");
        }
        for h in ["evil.example:9900", "10.0.0.5:9900", "[fe80::1]:9900", ""] {
            assert!(!host_is_loopback(h), "{h}");
        }
    }

    #[test]
    fn base64_decodes_as_http_basic_sends_it() {
        assert_eq!(
            decode_base64("YW5uYTpwdy1hbm5h").as_deref(),
            Some(&b"anna:pw-anna"[..])
        );
        assert_eq!(decode_base64("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64("!!"), None);
    }
}
