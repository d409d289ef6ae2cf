//! One HTTP/1.1 request as the endpoint reads it (method, path, query, headers, a bounded
//! body) and the answer it writes, with the headers every console answer carries. Pure apart
//! from [`write_response`].

use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use super::head::parse_request_target;

/// The largest request body taken (a board config being applied); larger is answered 413.
pub const MAX_BODY: usize = 1024 * 1024;

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path without its query.
    pub path: String,
    query: Vec<(String, String)>,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter, percent-decoded.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.header("cookie")?.split(';').find_map(|c| {
            let (n, v) = c.trim().split_once('=')?;
            (n == name).then_some(v)
        })
    }

    /// `Content-Length`, `None` when absent; `Err` with the text when it is not a number.
    pub fn content_length(&self) -> Result<Option<usize>, String> {
        match self.header("content-length") {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| v.to_owned()),
        }
    }
}

/// A complete request head (up to and including the blank line), or `None` when its request
/// line is not HTTP/1 or a header line has no colon.
pub fn parse_head(head: &[u8]) -> Option<Request> {
    let (method, target) = parse_request_target(head)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let text = std::str::from_utf8(head).ok()?;
    let mut headers = Vec::new();
    for line in text.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect(),
        headers,
        body: Vec::new(),
    })
}

/// `%XX` and `+` of a query string.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The page's Content-Security-Policy: scripts and styles from the agent only, nothing inline,
/// no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Body,
    /// Extra headers (Set-Cookie, WWW-Authenticate).
    pub headers: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone)]
pub enum Body {
    Owned(Vec<u8>),
    Static(&'static [u8]),
}

impl Body {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Body::Owned(b) => b,
            Body::Static(b) => b,
        }
    }
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: TEXT,
            body: Body::Owned(body.into().into_bytes()),
            headers: Vec::new(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: JSON,
            body: Body::Owned(value.to_string().into_bytes()),
            headers: Vec::new(),
        }
    }

    /// `{"error": why}`.
    pub fn error(status: u16, why: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": why.into() }))
    }

    pub fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
        Response {
            status: 200,
            content_type,
            body: Body::Static(body),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Service Unavailable",
    }
}

/// The head of an answer, with the security headers every answer carries.
pub fn head(
    status: u16,
    content_type: &str,
    length: Option<usize>,
    extra: &[(&str, String)],
    tls: bool,
) -> String {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nCache-Control: no-store\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nContent-Security-Policy: {CSP}\r\n",
        reason(status)
    );
    if let Some(n) = length {
        out.push_str(&format!("Content-Length: {n}\r\n"));
    }
    if tls {
        out.push_str("Strict-Transport-Security: max-age=31536000\r\n");
    }
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out
}

pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    r: &Response,
    head_only: bool,
    tls: bool,
) -> std::io::Result<()> {
    let body = r.body.bytes();
    let h = head(r.status, r.content_type, Some(body.len()), &r.headers, tls);
    stream.write_all(h.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_gives_its_path_query_headers_and_cookies() {
        let r = parse_head(b"GET /api/v1/tags?q=line%201+temp&device=plc1&x HTTP/1.1\r\nHost: 127.0.0.1:9\r\nCookie: a=1; edge_session=abc\r\nContent-Length: 12\r\n\r\n")
            .expect("parsed");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/v1/tags");
        assert_eq!(r.query("q"), Some("line 1 temp"));
        assert_eq!(r.query("device"), Some("plc1"));
        assert_eq!(r.query("x"), Some(""));
        assert_eq!(r.header("host"), Some("127.0.0.1:9"));
        assert_eq!(r.cookie("edge_session"), Some("abc"));
        assert_eq!(r.cookie("b"), None);
        assert_eq!(r.content_length(), Ok(Some(12)));
    }

    #[test]
    fn a_header_line_without_a_colon_is_no_request() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nbroken\r\n\r\n").is_none());
    }

    #[test]
    fn every_answer_forbids_framing_and_inline_script() {
        let h = head(200, TEXT, Some(3), &[], false);
        assert!(h.contains("X-Frame-Options: DENY\r\n"));
        assert!(h.contains("frame-ancestors 'none'"));
        assert!(!h.contains("unsafe-inline"));
        assert!(!h.contains("Strict-Transport-Security"));
        assert!(head(200, TEXT, None, &[], true).contains("Strict-Transport-Security"));
    }
}
