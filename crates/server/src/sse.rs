//! Server-sent events framing, once for every path that reads or writes a stream: the
//! ledger's usage scan, the PII restorer on a remote backend's stream, the gateway's error
//! events. The handlers' own streams are written by axum's `Sse`.
//!
//! An event ends at a blank line; lines end in LF, CRLF or CR, as the format allows.

/// Where the first complete event of `buffer` ends (after the blank line that closes it),
/// if one is complete. A CR at the very end may be the first half of a CRLF and waits for
/// the next bytes.
pub fn event_end(buffer: &[u8]) -> Option<usize> {
    match scan(buffer, Resume::default()) {
        Scanned::End(end) => Some(end),
        Scanned::More(_) => None,
    }
}

/// Where a scan of one event stopped: the next byte to look at, and where its current line
/// starts (both from the event's first byte).
#[derive(Debug, Clone, Copy, Default)]
struct Resume {
    at: usize,
    line_start: usize,
}

enum Scanned {
    End(usize),
    More(Resume),
}

fn scan(buffer: &[u8], from: Resume) -> Scanned {
    let Resume {
        at: mut i,
        mut line_start,
    } = from;
    while i < buffer.len() {
        let end_of_line = match buffer[i] {
            b'\n' => i + 1,
            b'\r' if i + 1 < buffer.len() => i + 1 + usize::from(buffer[i + 1] == b'\n'),
            b'\r' => return Scanned::More(Resume { at: i, line_start }),
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start && line_start > 0 {
            return Scanned::End(end_of_line);
        }
        line_start = end_of_line;
        i = end_of_line;
    }
    Scanned::More(Resume { at: i, line_start })
}

/// A stream's bytes, cut into whole events as they arrive. Each byte is looked at once
/// however the stream is chunked: an upstream that sends one long event a few bytes at a
/// time costs linear time, not quadratic.
#[derive(Debug, Default)]
pub struct EventBuffer {
    bytes: Vec<u8>,
    /// Where the next event starts in `bytes` (what is before it was handed out).
    start: usize,
    /// How far the event at `start` was scanned.
    resume: Resume,
    #[cfg(test)]
    examined: usize,
}

impl EventBuffer {
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.bytes.len() / 2 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    /// The next whole event (with the blank line that ends it), if one has arrived.
    pub fn next_event(&mut self) -> Option<&[u8]> {
        let rest = &self.bytes[self.start..];
        #[cfg(test)]
        {
            self.examined += rest.len() - self.resume.at;
        }
        match scan(rest, self.resume) {
            Scanned::End(end) => {
                let event = self.start..self.start + end;
                self.start += end;
                self.resume = Resume::default();
                Some(&self.bytes[event])
            }
            Scanned::More(resume) => {
                self.resume = resume;
                None
            }
        }
    }

    /// Nothing held back.
    pub fn is_empty(&self) -> bool {
        self.start == self.bytes.len()
    }

    /// What is held back (an event not ended yet), emptying the buffer.
    pub fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.bytes.split_off(self.start);
        *self = Self::default();
        rest
    }
}

/// The `data:` lines of one event, joined with newlines (one space after the colon
/// dropped, as the format says); None for an event without data (a comment, a keep-alive).
pub fn event_data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let lines: Vec<&str> = text
        .split(['\n', '\r'])
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// One event carrying `data` (one line: JSON, or `[DONE]`).
pub fn data_event(data: &str) -> String {
    format!("data: {data}\n\n")
}

/// One event named `name` carrying `data` (one line), as the Responses API sends its
/// typed events.
pub fn named_event(name: &str, data: &str) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The data of the event that ends an OpenAI stream.
pub const DONE: &str = "[DONE]";

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>, usize) {
        let mut buffer = EventBuffer::default();
        let mut events = Vec::new();
        for chunk in chunks {
            buffer.push(chunk);
            while let Some(event) = buffer.next_event() {
                events.push(event.to_vec());
            }
        }
        let examined = buffer.examined;
        (events, buffer.take_rest(), examined)
    }

    #[test]
    fn an_event_buffer_cuts_the_same_events_however_the_bytes_are_chunked() {
        let stream: &[u8] = b"data: 1\r\n\r\nevent: x\rdata: 2\r\rdata: 3\n\n: ping\n\ndata: 4";
        let whole = events_of(&[stream]);
        assert_eq!(
            whole.0,
            vec![
                b"data: 1\r\n\r\n".to_vec(),
                b"event: x\rdata: 2\r\r".to_vec(),
                b"data: 3\n\n".to_vec(),
                b": ping\n\n".to_vec()
            ]
        );
        assert_eq!(whole.1, b"data: 4");
        for size in 1..stream.len() {
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            let (events, rest, _) = events_of(&chunks);
            assert_eq!(
                (events, rest),
                (whole.0.clone(), whole.1.clone()),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn a_long_event_sent_byte_by_byte_is_scanned_once() {
        // 20,000 data lines and no blank line until the end, one byte at a time: a scan from
        // the start of the event on every byte would look at ~2e11 bytes.
        let mut stream = b"data: x\n".repeat(20_000);
        stream.extend_from_slice(b"\n");
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let (events, rest, examined) = events_of(&chunks);
        assert_eq!(events, vec![stream.clone()]);
        assert!(rest.is_empty());
        assert!(
            examined <= 2 * stream.len(),
            "{examined} bytes examined for {}",
            stream.len()
        );
    }

    #[test]
    fn events_end_at_a_blank_line_in_any_line_ending() {
        assert_eq!(event_end(b"data: 1\n\ndata: 2\n\n"), Some(9));
        assert_eq!(event_end(b"data: 1\r\n\r\ndata: 2"), Some(11));
        assert_eq!(event_end(b"data: 1\r\rdata: 2"), Some(9));
        assert_eq!(event_end(b"event: x\r\ndata: 1\r\n\r\n"), Some(21));
        // Not complete yet: no blank line, or a CR that may be half of a CRLF.
        assert_eq!(event_end(b"data: 1\r\n"), None);
        assert_eq!(event_end(b"data: 1\r\n\r"), None);
        assert_eq!(event_end(b"data: 1"), None);
        assert_eq!(event_end(b""), None);
    }

    #[test]
    fn data_lines_are_joined_and_comments_have_none() {
        assert_eq!(
            event_data(b"data: {\"a\":1}\n\n").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(
            event_data(b"data:x\r\ndata: y\r\n\r\n").as_deref(),
            Some("x\ny")
        );
        assert_eq!(event_data(b": keep-alive\n\n"), None);
        assert_eq!(data_event(DONE), "data: [DONE]\n\n");
        let named = named_event("response.created", "{}");
        assert_eq!(event_end(named.as_bytes()), Some(named.len()));
        assert_eq!(event_data(named.as_bytes()).as_deref(), Some("{}"));
    }
}
