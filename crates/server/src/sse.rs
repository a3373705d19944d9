//! Server-sent events framing, once for every path that reads or writes a stream: the
//! ledger's usage scan, the PII restorer on a remote backend's stream, the gateway's error
//! events. The handlers' own streams are written by axum's `Sse`.
//!
//! An event ends at a blank line; lines end in LF, CRLF or CR, as the format allows.

/// Where the first complete event of `buffer` ends (after the blank line that closes it),
/// if one is complete. A CR at the very end may be the first half of a CRLF and waits for
/// the next bytes.
pub fn event_end(buffer: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut line_start = 0;
    while i < buffer.len() {
        let end_of_line = match buffer[i] {
            b'\n' => i + 1,
            b'\r' if i + 1 < buffer.len() => i + 1 + usize::from(buffer[i + 1] == b'\n'),
            b'\r' => return None,
            _ => {
                i += 1;
                continue;
            }
        };
        if i == line_start && line_start > 0 {
            return Some(end_of_line);
        }
        line_start = end_of_line;
        i = end_of_line;
    }
    None
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
