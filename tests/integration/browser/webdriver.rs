//! A minimal blocking W3C WebDriver client for the browser tests: it starts Debian's
//! `chromedriver` on a free port of 127.0.0.1, opens one headless Chromium session and speaks
//! the WebDriver HTTP protocol over `std::net::TcpStream` with `serde_json` (no HTTP crate).
//! Every socket operation has a deadline and every wait loop is bounded.
#![allow(dead_code)] // not every test uses every command

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Deadline for one WebDriver command (connect, write, and the whole answer).
const COMMAND_LIMIT: Duration = Duration::from_secs(30);
/// How long chromedriver gets to answer `GET /status` with `ready: true`.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How long deleting the session may take when the driver is dropped.
const QUIT_LIMIT: Duration = Duration::from_secs(5);
/// W3C name of the key that carries an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver process with one open browser session; dropping it ends both.
#[derive(Debug)]
pub struct Driver {
    child: Child,
    addr: SocketAddr,
    session: String,
    /// Holds Chromium's profile (`profile/`) and chromedriver's output (`chromedriver.log`).
    dir: tempfile::TempDir,
}

/// An element of the current page, as found by `Driver::find`.
#[derive(Debug)]
pub struct Element<'d> {
    driver: &'d Driver,
    id: String,
}

impl Driver {
    /// Starts chromedriver and a headless Chromium session with a window of `width` x `height`
    /// (the outer window: the page's viewport is some 140 px less high).
    pub fn start(width: u32, height: u32) -> Result<Driver, String> {
        let chromedriver =
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let profile = dir.path().join("profile");
        let log = std::fs::File::create(dir.path().join("chromedriver.log"));
        let (log, log2) = log
            .and_then(|f| Ok((f.try_clone()?, f)))
            .map_err(|e| format!("chromedriver log file: {e}"))?;
        // Pick a free port by binding port 0 and letting it go; the race with another process
        // taking it in between is accepted (chromedriver then fails to start, and we say so).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {chromedriver}: {e}"))?;
        // From here on, an early return drops `driver`, which kills the child.
        let mut driver = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
            dir,
        };
        driver.wait_ready()?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", profile.display()),
            ]},
            "goog:loggingPrefs": {"browser": "ALL"},
            // Chromedriver's default page-load limit is 300 s; keep every command's own limit
            // under COMMAND_LIMIT so that a slow page is a WebDriver error, not a socket timeout.
            "timeouts": {"pageLoad": 20_000, "script": 20_000, "implicit": 0},
        }}});
        let value = driver.send("POST", "/session", Some(&caps), COMMAND_LIMIT)?;
        driver.session = value["sessionId"]
            .as_str()
            .ok_or_else(|| format!("new session: no sessionId in {value}"))?
            .to_owned();
        Ok(driver)
    }

    /// Polls `GET /status` until chromedriver says it is ready, for at most START_LIMIT.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "chromedriver exited with {status}: {}",
                    self.log_tail()
                ));
            }
            match self.send("GET", "/status", None, Duration::from_secs(2)) {
                Ok(v) if v["ready"] == json!(true) => return Ok(()),
                Ok(v) => last = format!("not ready: {v}"),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "chromedriver not ready after {START_LIMIT:?} ({last}): {}",
            self.log_tail()
        ))
    }

    /// The last lines chromedriver printed, for error messages.
    fn log_tail(&self) -> String {
        let log = self.dir.path().join("chromedriver.log");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join(" | ")
    }

    /// GET of a command of the session (`path` is relative to `/session/{id}`).
    fn get(&self, path: &str) -> Result<Value, String> {
        let full = format!("/session/{}{path}", self.session);
        self.send("GET", &full, None, COMMAND_LIMIT)
    }

    /// POST of a command of the session; W3C wants a JSON object even where there are no
    /// parameters (`{}`).
    fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let full = format!("/session/{}{path}", self.session);
        self.send("POST", &full, Some(&body), COMMAND_LIMIT)
    }

    /// One HTTP exchange with chromedriver; returns the answer's `value`, or its error as Err.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        limit: Duration,
    ) -> Result<Value, String> {
        let what = format!("{method} {path}");
        let deadline = Instant::now() + limit;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let io = |e: std::io::Error| format!("{what}: {e}");
        let mut stream = TcpStream::connect_timeout(&self.addr, limit).map_err(io)?;
        stream.set_write_timeout(Some(limit)).map_err(io)?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
             Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr, body.len()
        );
        stream.write_all(head.as_bytes()).map_err(io)?;
        stream.write_all(body.as_bytes()).map_err(io)?;
        // Read until the answer is complete (by Content-Length or the last chunk) or, failing
        // those, until the server closes; each read gets only what is left of the deadline.
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let (status, raw) = loop {
            if let Some(done) = parse_response(&buf, false)? {
                break done;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{what}: no complete answer within {limit:?}"));
            }
            stream.set_read_timeout(Some(left)).map_err(io)?;
            match stream.read(&mut chunk) {
                Ok(0) => match parse_response(&buf, true)? {
                    Some(done) => break done,
                    None => return Err(format!("{what}: connection closed mid-answer")),
                },
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        };
        let answer: Value = serde_json::from_slice(&raw).map_err(|e| {
            format!(
                "{what}: HTTP {status}, not JSON ({e}): {}",
                String::from_utf8_lossy(&raw)
            )
        })?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        // Errors come as {"value": {"error": "no such element", "message": "...", ...}}.
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            let message = value["message"].as_str().unwrap_or("");
            // Chromedriver's message usually starts with the error's name already.
            return Err(if message.starts_with(error) {
                format!("{what}: {message}")
            } else {
                format!("{what}: {error}: {message}")
            });
        }
        if !(200..300).contains(&status) {
            return Err(format!("{what}: HTTP {status}: {answer}"));
        }
        Ok(value)
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.post("/url", json!({ "url": url })).map(drop)
    }

    /// The URL of the current page.
    pub fn current_url(&self) -> Result<String, String> {
        string(self.get("/url")?, "current url")
    }

    /// Runs `script` as a function body in the page (`arguments[i]` are `args`); returns its result.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
    }

    /// The first element matching the CSS selector `css` (Err "no such element" if none).
    pub fn find(&self, css: &str) -> Result<Element<'_>, String> {
        let v = self.post("/element", json!({"using": "css selector", "value": css}))?;
        self.element(&v).map_err(|e| format!("find {css:?}: {e}"))
    }

    /// Every element matching the CSS selector `css`, in document order (maybe none).
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'_>>, String> {
        let v = self.post("/elements", json!({"using": "css selector", "value": css}))?;
        let list = v
            .as_array()
            .ok_or_else(|| format!("find all {css:?}: not a list: {v}"))?;
        list.iter().map(|e| self.element(e)).collect()
    }

    /// An element from its JSON reference `{ELEMENT_KEY: id}`.
    fn element(&self, v: &Value) -> Result<Element<'_>, String> {
        let id = v[ELEMENT_KEY]
            .as_str()
            .ok_or_else(|| format!("not an element reference: {v}"))?;
        Ok(Element {
            driver: self,
            id: id.to_owned(),
        })
    }

    /// A PNG screenshot of the viewport.
    pub fn screenshot_png(&self) -> Result<Vec<u8>, String> {
        edge_agent::admin::auth::decode_base64(&string(self.get("/screenshot")?, "screenshot")?)
            .ok_or_else(|| "the screenshot is not base64".to_owned())
    }

    /// Resizes the browser window to `width` x `height` CSS pixels.
    pub fn set_window_size(&self, width: u32, height: u32) -> Result<(), String> {
        let rect = json!({"width": width, "height": height});
        self.post("/window/rect", rect).map(drop)
    }

    /// Calls `f` every 100 ms until it returns Ok(true) or `timeout` has passed; the error says
    /// `what` was awaited and the last error `f` returned, if any.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Driver) -> Result<bool, String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last: Option<String> = None;
        loop {
            match f(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = Some(e),
            }
            if Instant::now() >= deadline {
                let last = last.unwrap_or_else(|| "none".to_owned());
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what}; last error: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Messages of level SEVERE in the browser log since the previous call (the log is drained
    /// by each read): JS exceptions, `console.error`, failed resource loads, CSP violations.
    pub fn browser_errors(&self) -> Result<Vec<String>, String> {
        // Not W3C: chromedriver's log endpoint, `/se/log` in W3C mode (the same as `/log`
        // of the legacy protocol). Needs `goog:loggingPrefs` {"browser": "ALL"} at session start.
        let v = self.post("/se/log", json!({"type": "browser"}))?;
        let entries = v
            .as_array()
            .ok_or_else(|| format!("browser log: not a list: {v}"))?;
        Ok(entries
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or("").to_owned())
            .collect())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Best effort: closes Chromium cleanly; the kill below happens in any case.
            let path = format!("/session/{}", self.session);
            let _ = self.send("DELETE", &path, None, QUIT_LIMIT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Element<'_> {
    /// The JSON reference of this element, to pass it in `Driver::execute`'s `args`.
    pub fn reference(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    /// GET of a command on this element (`path` is relative to `.../element/{id}`).
    fn get(&self, path: &str) -> Result<Value, String> {
        self.driver.get(&format!("/element/{}{path}", self.id))
    }

    /// POST of a command on this element.
    fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.driver
            .post(&format!("/element/{}{path}", self.id), body)
    }

    /// Clicks the element (scrolled into view; Err if another element would get the click).
    pub fn click(&self) -> Result<(), String> {
        self.post("/click", json!({})).map(drop)
    }

    /// Types `text` into the element, as key presses.
    pub fn send_keys(&self, text: &str) -> Result<(), String> {
        self.post("/value", json!({ "text": text })).map(drop)
    }

    /// Empties an input or textarea.
    pub fn clear(&self) -> Result<(), String> {
        self.post("/clear", json!({})).map(drop)
    }

    /// The rendered text of the element (as `innerText`: hidden text is left out).
    pub fn text(&self) -> Result<String, String> {
        string(self.get("/text")?, "text")
    }

    /// The HTML attribute `name` (None if absent); see `property` for live values like `value`.
    pub fn attribute(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self
            .get(&format!("/attribute/{name}"))?
            .as_str()
            .map(str::to_owned))
    }

    /// The DOM property `name` (e.g. `value`, `checked`, `disabled`) as JSON.
    pub fn property(&self, name: &str) -> Result<Value, String> {
        self.get(&format!("/property/{name}"))
    }

    /// Whether the element is visible to a user.
    pub fn is_displayed(&self) -> Result<bool, String> {
        let v = self.get("/displayed")?;
        v.as_bool()
            .ok_or_else(|| format!("displayed: not a bool: {v}"))
    }
}

/// Status and body of a complete HTTP/1.1 answer in `buf`; None while more bytes are needed.
/// `eof`: the server has closed, so a body without length or chunks ends here.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if eof {
            Err("connection closed before the answer's head".into())
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<usize>();
            length = Some(n.map_err(|e| format!("bad Content-Length {value:?}: {e}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buf[end + 4..];
    let complete = if chunked {
        dechunk(body)?
    } else {
        match length {
            Some(n) if body.len() >= n => Some(body[..n].to_vec()),
            None if eof => Some(body.to_vec()),
            _ => None,
        }
    };
    match complete {
        Some(body) => Ok(Some((status, body))),
        None if eof => Err("connection closed before the end of the body".into()),
        None => Ok(None),
    }
}

/// Decodes a chunked body: `<hex size>[;ext]\r\n<data>\r\n` ... `0\r\n[trailers]\r\n`;
/// None while the last chunk has not arrived.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&rest[..eol]);
        let hex = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|e| format!("bad chunk size {hex:?}: {e}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            // The last chunk; trailers (ignored) end with an empty line.
            let end = rest.starts_with(b"\r\n") || find(rest, b"\r\n\r\n").is_some();
            return Ok(end.then_some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// The JSON string `v`, or an error naming `what` was expected.
fn string(v: Value, what: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(format!("{what}: not a string: {other}")),
    }
}

/// Position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
