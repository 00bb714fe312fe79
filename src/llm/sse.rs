//! Server-sent events, cut out of a byte stream as they complete: each event
//! keeps its exact bytes (relayed unchanged) beside its parsed fields.

use bytes::{Bytes, BytesMut};

/// One event: its raw bytes (with the blank line that ends it), its `event:`
/// name and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub raw: Bytes,
    pub name: Option<String>,
    pub data: String,
}

/// Longest event accepted from an upstream before the stream counts as broken.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Parser {
    buf: BytesMut,
}

#[derive(Debug, PartialEq, Eq)]
pub struct TooLong;

impl Parser {
    /// Feeds bytes as they arrived; returns the events they completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, TooLong> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = event_end(&self.buf) {
            let raw = self.buf.split_to(end).freeze();
            if let Some(event) = parse(raw) {
                events.push(event);
            }
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(TooLong);
        }
        Ok(events)
    }

    /// The bytes of an event left unfinished (a stream cut mid-event).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The end (exclusive) of the first complete event: after a blank line,
/// whichever of `\n`, `\r\n` or `\r` ends the lines.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut line_start = true;
    while i < buf.len() {
        let newline = match buf[i] {
            b'\n' => 1,
            b'\r' if buf.get(i + 1) == Some(&b'\n') => 2,
            // A lone `\r` at the end may be the first half of `\r\n`: wait.
            b'\r' if i + 1 == buf.len() => return None,
            b'\r' => 1,
            _ => {
                line_start = false;
                i += 1;
                continue;
            }
        };
        if line_start {
            return Some(i + newline);
        }
        line_start = true;
        i += newline;
    }
    None
}

fn parse(raw: Bytes) -> Option<Event> {
    let text = String::from_utf8_lossy(&raw);
    let mut name = None;
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']).filter(|line| !line.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "event" => name = Some(value.to_owned()),
            "data" => match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    // A comment-only block (a keep-alive) is still relayed, as an event without data.
    Some(Event { raw, name, data: data.unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const STREAM: &str =
        "data: {\"a\":1}\n\nevent: message_delta\ndata: {\"b\":\ndata: 2}\r\n\r\n: ping\n\ndata: [DONE]\n\n";

    #[test]
    fn events_keep_their_bytes_and_fields() {
        let mut parser = Parser::default();
        let events = parser.push(STREAM.as_bytes()).unwrap();
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].data, "{\"a\":1}");
        assert_eq!(events[1].name.as_deref(), Some("message_delta"));
        assert_eq!(events[1].data, "{\"b\":\n2}");
        assert_eq!(events[2].data, "");
        assert_eq!(events[3].data, "[DONE]");
        let joined: Vec<u8> = events.iter().flat_map(|e| e.raw.to_vec()).collect();
        assert_eq!(joined, STREAM.as_bytes());
        assert_eq!(parser.pending(), 0);
    }

    #[test]
    fn an_unfinished_event_waits() {
        let mut parser = Parser::default();
        assert!(parser.push(b"data: {\"a\"").unwrap().is_empty());
        assert!(parser.push(b":1}\n").unwrap().is_empty());
        assert_eq!(parser.push(b"\n").unwrap()[0].data, "{\"a\":1}");
    }

    proptest! {
        /// However the bytes are cut, the same events come out, and their raw bytes rebuild the input.
        #[test]
        fn any_split_gives_the_same_events(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..8)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut parser = Parser::default();
            let mut events = Vec::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([STREAM.len()]) {
                events.extend(parser.push(&STREAM.as_bytes()[at..cut]).unwrap());
                at = cut;
            }
            let whole = Parser::default().push(STREAM.as_bytes()).unwrap();
            prop_assert_eq!(events, whole);
        }
    }
}
