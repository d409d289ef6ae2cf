//! The console's doors, against the real binary: a listener beyond loopback without users is a
//! config error (`check` and `run`, exit 64 at its position); with users every API call needs
//! credentials, a wrong password is refused, a POST from another site or without the CSRF
//! token is refused, a viewer cannot change anything; the probes can be opened for
//! Prometheus alone; and the OpenAPI document names exactly the routes the server answers.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::*;
use crate::support::agent::run_cli_with;
use crate::support::{free_port, AgentProcess, TestDir};

/// One HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or(Json::Null)
    }

    /// A header's value (names compared without case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// `method path` on 127.0.0.1:`port` with `headers` (a `Host` of 127.0.0.1:port unless one is
/// given) and an optional body.
pub(crate) async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    let talk = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(20), talk)
        .await
        .expect("answered in time")
        .expect("the exchange works");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// A config check with a session cookie and the given `Origin`, `Sec-Fetch-Site` and
/// `X-CSRF-Token` headers.
async fn post_check(
    port: u16,
    cookie: &str,
    origin: Option<&str>,
    fetch_site: Option<&str>,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let mut headers = vec![("Cookie", cookie)];
    headers.extend(origin.map(|o| ("Origin", o)));
    headers.extend(fetch_site.map(|f| ("Sec-Fetch-Site", f)));
    headers.extend(token.map(|t| ("X-CSRF-Token", t)));
    http(port, "POST", "/api/v1/config/check", &headers, Some(body)).await
}

/// Waits (bounded) until `GET path` answers at all.
pub(crate) async fn wait_listening(port: u16, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = async {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            anyhow::Ok(!out.is_empty())
        };
        if matches!(
            tokio::time::timeout(Duration::from_secs(5), up).await,
            Ok(Ok(true))
        ) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the admin endpoint on {port} never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A users-file line made by `edge-agent console-user` (the fewest rounds, for speed).
pub(crate) fn user_line(name: &str, role: &str, password: &str) -> String {
    let mut child = Command::new(bin())
        .args([
            "console-user",
            name,
            "--role",
            role,
            "--iterations",
            "10000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("console-user runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("password sent");
    let out = child.wait_with_output().expect("console-user ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        line.starts_with(&format!("{name}:{role}:pbkdf2-sha256$10000$")),
        "{line}"
    );
    assert!(
        !line.contains(password),
        "the password itself is not in the line"
    );
    line
}

/// A config with one Modbus device on `plc_port` (nothing needs to answer there) and `admin`.
fn config_with_admin(data: &Path, admin: &str) -> String {
    let dev = device("plc", free_port(), 200, vec![tag("level", "hr:0", "u16")]);
    format!(
        "{}\n[admin]\n{admin}\n",
        config_toml(data, free_port(), "per-tag", "", &[dev])
    )
}

#[test]
fn a_console_beyond_loopback_without_users_is_refused_by_check_and_run_at_its_position() {
    let dir = TestDir::new();
    let path = dir.join("board.toml");
    let text = config_with_admin(&dir.join("data"), "listen = \"0.0.0.0:9900\"");
    std::fs::write(&path, &text).expect("config written");
    let line = text
        .lines()
        .position(|l| l.starts_with("listen = \"0.0.0.0"))
        .expect("the listen line")
        + 1;
    for command in ["check", "run"] {
        let out = run_cli_with(
            &bin(),
            &[command, "-c", path.to_str().expect("utf-8")],
            &[],
            Duration::from_secs(60),
        )
        .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "board.toml:{line}:10: the admin endpoint listens beyond this machine"
            )),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains("users_file"),
            "the hint names the fix: {stderr}"
        );
    }
}

#[tokio::test]
async fn with_users_every_call_needs_credentials_and_changes_need_the_pages_own_origin_and_token() {
    let dir = TestDir::new();
    let users = dir.join("users");
    let lines = format!(
        "{}\n{}\n",
        user_line("anna", "admin", "anna-password-1"),
        user_line("vera", "viewer", "vera-password-1")
    );
    std::fs::write(&users, lines).expect("users written");
    let port = free_port();
    let path = dir.join("board.toml");
    std::fs::write(
        &path,
        config_with_admin(
            &dir.join("data"),
            &format!(
                "listen = \"127.0.0.1:{port}\"\nusers_file = \"{}\"",
                users.display()
            ),
        ),
    )
    .expect("config written");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    wait_listening(port, "/live").await;

    // Nothing but the page itself (which shows its sign-in form) without credentials.
    for path in [
        "/api/v1/overview",
        "/api/v1/tags",
        "/api/v1/config",
        "/api/v1/session",
        "/metrics",
        "/live",
        "/api/v1/events",
    ] {
        let a = http(port, "GET", path, &[], None).await;
        assert_eq!(a.status, 401, "{path}: {a:?}");
    }
    let page = http(port, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));

    let login =
        |user: &str, password: &str| json!({ "user": user, "password": password }).to_string();
    let wrong = http(
        port,
        "POST",
        "/api/v1/login",
        &[],
        Some(&login("anna", "not-her-password")),
    )
    .await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(wrong.header("set-cookie").is_none());
    let nobody = http(
        port,
        "POST",
        "/api/v1/login",
        &[],
        Some(&login("mallory", "anna-password-1")),
    )
    .await;
    assert_eq!(nobody.status, 401);

    let ok = http(
        port,
        "POST",
        "/api/v1/login",
        &[],
        Some(&login("anna", "anna-password-1")),
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let cookie = ok.header("set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().expect("name=value").to_owned();
    let csrf = ok.json()["csrf"].as_str().expect("a CSRF token").to_owned();
    assert_eq!(ok.json()["role"], json!("admin"));

    let overview = http(
        port,
        "GET",
        "/api/v1/overview",
        &[("Cookie", &session)],
        None,
    )
    .await;
    assert_eq!(overview.status, 200, "{overview:?}");
    assert_eq!(overview.json()["gateway"]["id"], json!("gw-test"));

    let own = format!("http://127.0.0.1:{port}");
    let check = json!({ "text": "[gateway]\n" }).to_string();
    let no_token = post_check(port, &session, Some(&own), None, None, &check).await;
    assert_eq!(no_token.status, 403, "{no_token:?}");
    let cross_site = post_check(
        port,
        &session,
        Some("http://evil.example"),
        None,
        Some(&csrf),
        &check,
    )
    .await;
    assert_eq!(cross_site.status, 403, "{cross_site:?}");
    assert!(cross_site.body.contains("cross-site"), "{cross_site:?}");
    let fetch_meta = post_check(
        port,
        &session,
        None,
        Some("cross-site"),
        Some(&csrf),
        &check,
    )
    .await;
    assert_eq!(fetch_meta.status, 403, "{fetch_meta:?}");
    let same_site = post_check(port, &session, Some(&own), None, Some(&csrf), &check).await;
    assert_eq!(same_site.status, 200, "{same_site:?}");
    assert_eq!(
        same_site.json()["ok"],
        json!(false),
        "that config is incomplete"
    );

    // Scripts: HTTP Basic, no cookie, no token.
    let basic = "Basic YW5uYTphbm5hLXBhc3N3b3JkLTE="; // anna:anna-password-1
    let scripted = http(
        port,
        "GET",
        "/api/v1/tags?q=level",
        &[("Authorization", basic)],
        None,
    )
    .await;
    assert_eq!(scripted.status, 200, "{scripted:?}");
    assert_eq!(scripted.json()["total"], json!(1));
    let metrics = http(port, "GET", "/metrics", &[("Authorization", basic)], None).await;
    assert_eq!(metrics.status, 200);
    let bad_basic = http(
        port,
        "GET",
        "/api/v1/tags",
        &[("Authorization", "Basic YW5uYTp4")],
        None,
    )
    .await;
    assert_eq!(bad_basic.status, 401);

    // A viewer looks, and changes nothing.
    let v = http(
        port,
        "POST",
        "/api/v1/login",
        &[],
        Some(&login("vera", "vera-password-1")),
    )
    .await;
    assert_eq!(v.status, 200);
    assert_eq!(v.json()["role"], json!("viewer"));
    let v_session = v
        .header("set-cookie")
        .expect("cookie")
        .split(';')
        .next()
        .expect("v")
        .to_owned();
    let v_csrf = v.json()["csrf"].as_str().expect("csrf").to_owned();
    assert_eq!(
        http(
            port,
            "GET",
            "/api/v1/config",
            &[("Cookie", &v_session)],
            None
        )
        .await
        .status,
        200
    );
    let v_post = post_check(port, &v_session, Some(&own), None, Some(&v_csrf), &check).await;
    assert_eq!(v_post.status, 403, "{v_post:?}");

    // Signed out, the cookie opens nothing.
    let out = http(
        port,
        "POST",
        "/api/v1/logout",
        &[
            ("Cookie", &session),
            ("Origin", &own),
            ("X-CSRF-Token", &csrf),
        ],
        Some("{}"),
    )
    .await;
    assert_eq!(out.status, 204, "{out:?}");
    assert_eq!(
        http(
            port,
            "GET",
            "/api/v1/overview",
            &[("Cookie", &session)],
            None
        )
        .await
        .status,
        401
    );

    agent.terminate().expect("stops");
}

#[tokio::test]
async fn on_loopback_without_users_the_console_answers_to_loopback_names_only_and_the_probes_stay_open(
) {
    let dir = TestDir::new();
    let port = free_port();
    let path = dir.join("board.toml");
    std::fs::write(
        &path,
        config_with_admin(&dir.join("data"), &format!("listen = \"127.0.0.1:{port}\"")),
    )
    .expect("config");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    wait_listening(port, "/live").await;
    let s = http(port, "GET", "/api/v1/session", &[], None).await;
    assert_eq!(s.status, 200, "{s:?}");
    assert_eq!(s.json()["auth_required"], json!(false));
    assert_eq!(s.json()["edit_enabled"], json!(false));
    // A page of another site reaching 127.0.0.1 through its own DNS name.
    let rebound = http(
        port,
        "GET",
        "/api/v1/overview",
        &[("Host", &format!("evil.example:{port}"))],
        None,
    )
    .await;
    assert_eq!(rebound.status, 403, "{rebound:?}");
    let csrf = s.json()["csrf"].as_str().expect("csrf").to_owned();
    // Editing is off: apply is refused, and so is a POST without the token.
    let apply = json!({ "text": std::fs::read_to_string(&path).expect("config") }).to_string();
    let off = http(
        port,
        "POST",
        "/api/v1/config/apply",
        &[("X-CSRF-Token", &csrf)],
        Some(&apply),
    )
    .await;
    assert_eq!(off.status, 409, "{off:?}");
    let forged = http(port, "POST", "/api/v1/config/apply", &[], Some(&apply)).await;
    assert_eq!(forged.status, 403, "{forged:?}");
    assert_eq!(http(port, "GET", "/metrics", &[], None).await.status, 200);
    agent.terminate().expect("stops");
}

#[tokio::test]
async fn prometheus_alone_may_scrape_beyond_loopback_while_the_console_is_off() {
    let dir = TestDir::new();
    let port = free_port();
    let path = dir.join("board.toml");
    std::fs::write(
        &path,
        config_with_admin(
            &dir.join("data"),
            &format!("listen = \"0.0.0.0:{port}\"\nconsole = false\nopen_probes = true"),
        ),
    )
    .expect("config");
    let check = run_cli_with(
        &bin(),
        &["check", "-c", path.to_str().expect("utf-8")],
        &[],
        Duration::from_secs(60),
    )
    .expect("check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    wait_listening(port, "/live").await;
    let metrics = http(
        port,
        "GET",
        "/metrics",
        &[("Host", &format!("gateway.plant:{port}"))],
        None,
    )
    .await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("edge_agent_"), "{}", metrics.body);
    assert_eq!(http(port, "GET", "/", &[], None).await.status, 404);
    assert_eq!(
        http(port, "GET", "/api/v1/overview", &[], None)
            .await
            .status,
        404
    );
    agent.terminate().expect("stops");
}

/// With a certificate the console speaks HTTPS only: a client trusting its CA gets the page
/// with HSTS and a `Secure` cookie; plain HTTP on the same port gets no answer.
#[tokio::test]
async fn with_a_certificate_the_console_is_served_over_tls_only() {
    use std::sync::Arc;
    let dir = TestDir::new();
    let ca = crate::security::Ca::new("console test CA");
    let ca_file = ca.write(&dir, "ca");
    let (cert, key) = ca.issue_server(&dir, "console");
    let users = dir.join("users");
    std::fs::write(&users, user_line("anna", "admin", "anna-password-1")).expect("users");
    let port = free_port();
    let path = dir.join("board.toml");
    std::fs::write(
        &path,
        config_with_admin(
            &dir.join("data"),
            &format!(
                "listen = \"127.0.0.1:{port}\"\nusers_file = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
                users.display(),
                cert.display(),
                key.display()
            ),
        ),
    )
    .expect("config");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    agent
        .wait_log("the console at https://", Duration::from_secs(30))
        .await
        .expect("listening");

    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&ca_file).expect("ca");
    for c in rustls_pemfile_certs(&pem) {
        roots.add(c).expect("CA added");
    }
    edge_agent::init_tls();
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let body = json!({"user": "anna", "password": "anna-password-1"}).to_string();
    let request = format!(
        "POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let talk = async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
        let mut s = connector.connect(name, tcp).await?;
        s.write_all(request.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let answer = tokio::time::timeout(Duration::from_secs(20), talk)
        .await
        .expect("in time")
        .expect("TLS works");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.contains("Strict-Transport-Security: max-age="),
        "{answer}"
    );
    let cookie = answer
        .lines()
        .find(|l| l.starts_with("Set-Cookie:"))
        .expect("a cookie");
    assert!(cookie.contains("; Secure"), "{cookie}");

    // Plain HTTP to the TLS port: the handshake fails, no page is served.
    let plain = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(20), plain)
        .await
        .expect("in time")
        .expect("talks");
    assert!(
        !text.contains("<html") && !text.contains("200 OK"),
        "{text}"
    );
    agent.terminate().expect("stops");
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

/// Every operation of docs/api/openapi.json, asked of the real server, answers with a status
/// the document lists for it; and every route the server knows is in the document.
#[tokio::test]
async fn the_openapi_document_and_the_server_agree_on_every_route() {
    let doc: Json = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api/openapi.json"),
        )
        .expect("docs/api/openapi.json"),
    )
    .expect("valid JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    let documented: Vec<&str> = paths.keys().map(String::as_str).collect();
    for route in edge_agent::admin::console::ROUTES {
        assert!(
            documented.contains(route),
            "{route} is served but not documented"
        );
    }

    let dir = TestDir::new();
    let port = free_port();
    let path = dir.join("board.toml");
    std::fs::write(
        &path,
        config_with_admin(&dir.join("data"), &format!("listen = \"127.0.0.1:{port}\"")),
    )
    .expect("config");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    wait_listening(port, "/live").await;
    let csrf = http(port, "GET", "/api/v1/session", &[], None).await.json()["csrf"]
        .as_str()
        .expect("csrf")
        .to_owned();
    for (route, ops) in paths {
        assert!(
            edge_agent::admin::console::ROUTES.contains(&route.as_str())
                || ["/live", "/ready", "/metrics"].contains(&route.as_str()),
            "{route} is documented but the server does not know it"
        );
        for (method, op) in ops.as_object().expect("operations") {
            let method = method.to_uppercase();
            if !["GET", "POST", "HEAD"].contains(&method.as_str()) || route == "/api/v1/events" {
                continue;
            }
            let query = match route.as_str() {
                "/api/v1/history" => "?device=plc&tag=level",
                _ => "",
            };
            let body = match route.as_str() {
                "/api/v1/login" => Some(json!({"user": "x", "password": "y"}).to_string()),
                "/api/v1/config/check" | "/api/v1/config/apply" => {
                    Some(json!({"text": "[gateway]\n"}).to_string())
                }
                "/api/v1/probe" => Some(json!({"device": "nope", "address": "hr:0"}).to_string()),
                "/api/v1/browse" | "/api/v1/browse/toml" => {
                    Some(json!({"device": "nope", "nodes": []}).to_string())
                }
                _ if method == "POST" => Some("{}".to_owned()),
                _ => None,
            };
            let a = http(
                port,
                &method,
                &format!("{route}{query}"),
                &[("X-CSRF-Token", &csrf)],
                body.as_deref(),
            )
            .await;
            let listed = op["responses"].as_object().expect("responses");
            assert!(
                listed.contains_key(&a.status.to_string()),
                "{method} {route} answered {} which the document does not list ({:?}): {}",
                a.status,
                listed.keys().collect::<Vec<_>>(),
                a.body
            );
            if a.status == 200
                && a.header("content-type")
                    .is_some_and(|t| t.starts_with("application/json"))
            {
                let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
                let required = resolve(&doc, schema)["required"].clone();
                for key in required.as_array().into_iter().flatten() {
                    let key = key.as_str().expect("a key");
                    assert!(
                        a.json().get(key).is_some(),
                        "{method} {route}: `{key}` is required by the document: {}",
                        a.body
                    );
                }
            }
        }
    }
    // The event stream: one overview event within a few seconds.
    let events = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(
            format!("GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\n\n")
            || !String::from_utf8_lossy(&got).contains("event: overview")
        {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(String::from_utf8_lossy(&got).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("an event in time")
        .expect("reads");
    assert!(text.contains("Content-Type: text/event-stream"), "{text}");
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let overview: Json = serde_json::from_str(data).expect("the data is JSON");
    assert_eq!(overview["devices"][0]["name"], json!("plc"));
    agent.terminate().expect("stops");
}

/// A schema, with a `$ref` followed.
fn resolve<'d>(doc: &'d Json, schema: &'d Json) -> &'d Json {
    match schema.get("$ref").and_then(Json::as_str) {
        Some(r) => {
            let mut at = doc;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            at
        }
        None => schema,
    }
}
