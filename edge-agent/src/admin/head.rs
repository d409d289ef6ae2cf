//! The request head as it arrives: bytes gathered up to the blank line that ends it, at most
//! [`MAX_REQUEST`] of them, and its request line parsed strictly. Pure (no I/O).

/// The largest request head read; anything longer is answered 431.
pub const MAX_REQUEST: usize = 8 * 1024;

/// A request head arriving in pieces, kept to [`MAX_REQUEST`] bytes.
#[derive(Debug, Default)]
pub struct HeadBuf {
    bytes: Vec<u8>,
    /// Everything before this has been searched for the blank line, so a head sent one
    /// byte at a time costs linear time, not quadratic.
    searched: usize,
    state: HeadState,
    /// What arrived after the blank line: the start of the body.
    rest: Vec<u8>,
}

/// How far a request head has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadState {
    #[default]
    Incomplete,
    /// The blank line that ends the head arrived (what came after it is kept as the body's
    /// start).
    Complete,
    /// [`MAX_REQUEST`] bytes and no end in sight.
    TooLarge,
}

impl HeadBuf {
    /// Appends what arrived and says how far the head is; a finished head takes nothing more.
    pub fn push(&mut self, chunk: &[u8]) -> HeadState {
        if self.state != HeadState::Incomplete {
            return self.state;
        }
        // The whole chunk is kept (a body may follow the head in it); the head itself must end
        // within the limit. Chunks come from a bounded read buffer, so this stays bounded.
        self.bytes.extend_from_slice(chunk);
        let from = self.searched.saturating_sub(3);
        let end = self
            .bytes
            .get(from..)
            .unwrap_or_default()
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| from + at + 4);
        self.searched = self.bytes.len();
        self.state = match end {
            Some(end) if end <= MAX_REQUEST => {
                self.rest = self.bytes.split_off(end);
                HeadState::Complete
            }
            Some(_) => HeadState::TooLarge,
            None if self.bytes.len() >= MAX_REQUEST => HeadState::TooLarge,
            None => HeadState::Incomplete,
        };
        self.state
    }

    /// How far the head has arrived.
    pub fn state(&self) -> HeadState {
        self.state
    }

    /// The head's bytes, up to and including the blank line once complete.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// What arrived after the head (the start of a body).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.rest)
    }

    /// The method and path of a complete head, if its request line is HTTP/1.
    #[cfg(test)]
    pub fn request_line(&self) -> Option<(&str, &str)> {
        match self.state {
            HeadState::Complete => parse_request_line(&self.bytes),
            _ => None,
        }
    }
}

/// The method and path of a request head, if it is a complete HTTP/1 request line.
pub fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let (method, target) = parse_request_target(head)?;
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

/// The method and whole target (path and query) of a complete HTTP/1 request line.
pub fn parse_request_target(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(head.get(..line_end)?).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some((method, target))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// However the network cuts a head into pieces, it completes on the piece holding
        /// its last byte, with the same request line as when it arrives whole.
        #[test]
        fn any_cut_of_a_head_gives_the_same_request_as_the_whole(
            headers in proptest::collection::vec("[A-Za-z-]{1,12}: [ -~]{0,40}", 0..8),
            cuts in proptest::collection::vec(1usize..64, 0..40),
        ) {
            let mut text = b"GET /ready?x=1 HTTP/1.1\r\n".to_vec();
            for h in &headers {
                text.extend_from_slice(h.as_bytes());
                text.extend_from_slice(b"\r\n");
            }
            text.extend_from_slice(b"\r\n");
            let mut h = HeadBuf::default();
            let mut at = 0;
            let mut cuts = cuts.into_iter();
            while at < text.len() {
                let end = (at + cuts.next().unwrap_or(text.len())).min(text.len());
                let state = h.push(&text[at..end]);
                let want = if end == text.len() { HeadState::Complete } else { HeadState::Incomplete };
                prop_assert_eq!(state, want);
                at = end;
            }
            prop_assert_eq!(h.request_line(), Some(("GET", "/ready")));
        }
    }

    #[test]
    fn request_lines_are_parsed_strictly() {
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(parse_request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"GET / HTTP/2 extra\r\n"), None);
        assert_eq!(parse_request_line(b"GET / HTTP/1.1"), None);
        assert_eq!(parse_request_line(b"GET  /live HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"\xff /live HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            parse_request_line(b"HEAD /live HTTP/1.0\r\n\r\n"),
            Some(("HEAD", "/live"))
        );
    }

    #[test]
    fn a_head_sent_whole_is_complete_at_once() {
        let mut h = HeadBuf::default();
        assert_eq!(
            h.push(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n"),
            HeadState::Complete
        );
        assert_eq!(h.request_line(), Some(("GET", "/live")));
    }

    #[test]
    fn a_head_sent_one_byte_at_a_time_completes_on_its_last_byte() {
        let text = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut h = HeadBuf::default();
        for (i, b) in text.iter().enumerate() {
            let want = if i + 1 == text.len() {
                HeadState::Complete
            } else {
                HeadState::Incomplete
            };
            assert_eq!(h.push(std::slice::from_ref(b)), want, "after byte {i}");
            assert_eq!(h.request_line().is_some(), want == HeadState::Complete);
        }
        assert_eq!(h.request_line(), Some(("GET", "/ready")));
    }

    #[test]
    fn the_blank_line_is_found_when_it_is_split_across_pieces() {
        for split in 1..4 {
            let mut h = HeadBuf::default();
            let end = b"\r\n\r\n";
            let mut first = b"GET /live HTTP/1.1".to_vec();
            first.extend_from_slice(&end[..split]);
            assert_eq!(h.push(&first), HeadState::Incomplete, "split at {split}");
            assert_eq!(
                h.push(&end[split..]),
                HeadState::Complete,
                "split at {split}"
            );
        }
    }

    #[test]
    fn bytes_after_the_head_are_kept_as_the_start_of_the_body() {
        let mut h = HeadBuf::default();
        assert_eq!(
            h.push(b"POST /live HTTP/1.1\r\n\r\n{\"text\":1}"),
            HeadState::Complete
        );
        assert_eq!(h.push(b"more"), HeadState::Complete);
        assert_eq!(h.request_line(), Some(("POST", "/live")));
        assert_eq!(h.bytes(), b"POST /live HTTP/1.1\r\n\r\n");
        assert_eq!(h.take_rest(), b"{\"text\":1}");
    }

    #[test]
    fn a_head_without_end_is_too_large_at_the_limit_and_grows_no_further() {
        let mut h = HeadBuf::default();
        let filler = [b'a'; 1000];
        let mut pushed = 0;
        let mut state = HeadState::Incomplete;
        while state == HeadState::Incomplete && pushed < 4 * MAX_REQUEST {
            state = h.push(&filler);
            pushed += filler.len();
        }
        assert_eq!(state, HeadState::TooLarge);
        assert!(pushed >= MAX_REQUEST && pushed < MAX_REQUEST + filler.len());
        assert!(h.bytes.len() < MAX_REQUEST + filler.len());
        assert_eq!(h.push(b"\r\n\r\n"), HeadState::TooLarge);
        assert_eq!(h.request_line(), None);
    }

    #[test]
    fn a_head_that_ends_exactly_at_the_limit_is_accepted() {
        let mut text = b"GET /live HTTP/1.1\r\nX: ".to_vec();
        text.resize(MAX_REQUEST - 4, b'a');
        text.extend_from_slice(b"\r\n\r\n");
        let mut h = HeadBuf::default();
        assert_eq!(h.push(&text), HeadState::Complete);
        assert_eq!(h.request_line(), Some(("GET", "/live")));
    }

    #[test]
    fn a_complete_head_with_a_bad_request_line_has_no_request() {
        let mut h = HeadBuf::default();
        assert_eq!(h.push(b"hello\r\n\r\n"), HeadState::Complete);
        assert_eq!(h.request_line(), None);
    }
}
