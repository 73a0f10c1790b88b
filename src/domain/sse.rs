//! An incremental Server-Sent Events parser for upstream streams: feed it bytes as they
//! arrive, take complete events out. Lines may end in `\n`, `\r\n` or `\r`, and may be
//! split anywhere across reads. Each byte is looked at once, and what an event may hold
//! is bounded: an event (its pending line plus its data and name) larger than the limit
//! is an error, never an unbounded buffer.

/// One complete event: its `event:` name (if any) and its joined `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// The stream broke the parser's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an upstream stream event exceeds {limit} bytes")]
pub struct EventTooLarge {
    pub limit: usize,
}

#[derive(Debug)]
pub struct SseParser {
    /// The current line, not yet terminated.
    line: Vec<u8>,
    /// The last byte seen was a `\r`: a `\n` right after it belongs to the same line end.
    after_cr: bool,
    event: Option<String>,
    data: Option<String>,
    max_event_bytes: usize,
}

/// Events of a few MiB are already far beyond any vendor's; the gateway configures its own.
const DEFAULT_MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            event: None,
            data: None,
            max_event_bytes: max_event_bytes.max(1),
        }
    }

    /// Appends `bytes` and returns every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, EventTooLarge> {
        let mut events = Vec::new();
        let mut rest = bytes;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.append(&rest[..end])?;
            let terminator = rest[end];
            rest = &rest[end + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.on_line(&line) {
                events.push(event);
            }
            // Reuse the line's allocation, unless one huge line would be kept alive.
            if line.capacity() <= 64 * 1024 {
                self.line = line;
                self.line.clear();
            }
        }
        self.append(rest)?;
        Ok(events)
    }

    /// Bytes held for the event being received (its pending line, data and name).
    pub fn pending(&self) -> usize {
        self.line.len()
            + self.data.as_ref().map_or(0, String::len)
            + self.event.as_ref().map_or(0, String::len)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), EventTooLarge> {
        if self.pending() + bytes.len() > self.max_event_bytes {
            return Err(EventTooLarge {
                limit: self.max_event_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Interprets one complete line; a blank line dispatches the event.
    fn on_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            return data.map(|data| SseEvent { event, data });
        }
        if line[0] == b':' {
            return None;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event = Some(value.into_owned()),
            b"data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(p: &mut SseParser, bytes: &[u8]) -> Vec<SseEvent> {
        p.push(bytes).unwrap()
    }

    #[test]
    fn events_split_across_reads_are_reassembled() {
        let mut p = SseParser::default();
        assert!(parse_all(&mut p, b"data: {\"a\"").is_empty());
        let events = parse_all(&mut p, b":1}\n\ndata: [DONE]\n\n");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data, "{\"a\":1}");
        assert_eq!(events[1].data, "[DONE]");
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn crlf_comments_names_and_multiline_data_are_understood() {
        let mut p = SseParser::default();
        let events = parse_all(
            &mut p,
            b": ping\r\n\r\nevent: message_start\r\ndata: a\r\ndata: b\r\n\r\n",
        );
        assert_eq!(
            events,
            vec![SseEvent {
                event: Some("message_start".into()),
                data: "a\nb".into()
            }]
        );
    }

    #[test]
    fn a_crlf_split_between_reads_is_one_line_end() {
        let mut p = SseParser::default();
        assert!(parse_all(&mut p, b"data: x\r").is_empty());
        assert!(parse_all(&mut p, b"\n").is_empty());
        // The blank line's `\r` ends the event; its `\n`, in the next read, is the same
        // line end, not a second blank line.
        let events = parse_all(&mut p, b"\r");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "x");
        let events = parse_all(&mut p, b"\ndata: y\n\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, "y");
    }

    #[test]
    fn an_event_over_the_limit_is_an_error_not_a_buffer() {
        let mut p = SseParser::new(1024);
        assert!(p.push(&[b'a'; 600]).is_ok());
        assert_eq!(p.push(&[b'a'; 600]), Err(EventTooLarge { limit: 1024 }));
        let mut p = SseParser::new(1024);
        for _ in 0..10 {
            let events = p.push(b"data: 0123456789012345678901234567890123456789\n");
            assert_eq!(events, Ok(Vec::new()));
        }
        assert!(p.pending() <= 1024);
        assert!(p.push(&[b'x'; 1024]).is_err());
    }

    #[test]
    fn comments_of_any_total_length_are_not_kept() {
        let mut p = SseParser::new(64);
        for _ in 0..10_000 {
            assert!(parse_all(&mut p, b": keep-alive\n").is_empty());
        }
        assert_eq!(p.pending(), 0);
    }

    /// An event as a writer would frame it: optional name, data lines.
    fn frame(event: &Option<String>, data: &str, eol: &str) -> String {
        let mut out = String::new();
        if let Some(name) = event {
            out.push_str(&format!("event: {name}{eol}"));
        }
        for line in data.split('\n') {
            out.push_str(&format!("data: {line}{eol}"));
        }
        out.push_str(eol);
        out
    }

    fn field_text() -> impl Strategy<Value = String> {
        // Any text without line breaks; data may hold '\n' (it becomes several lines).
        proptest::string::string_regex("[^\r\n]{0,40}").unwrap()
    }

    proptest! {
        #[test]
        fn any_framing_and_any_split_reassembles_the_events(
            events in proptest::collection::vec(
                (proptest::option::of(proptest::string::string_regex("[a-z_]{1,12}").unwrap()),
                 proptest::collection::vec(field_text(), 1..4)),
                0..12),
            eol in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
            comment in any::<bool>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let expected: Vec<SseEvent> = events
                .iter()
                .map(|(event, lines)| SseEvent { event: event.clone(), data: lines.join("\n") })
                .collect();
            let mut wire = String::new();
            for e in &expected {
                if comment {
                    wire.push_str(&format!(": keep-alive{eol}"));
                }
                wire.push_str(&frame(&e.event, &e.data, eol));
            }
            let bytes = wire.as_bytes();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut parser = SseParser::default();
            let mut got = Vec::new();
            let mut start = 0;
            for p in points.into_iter().chain(std::iter::once(bytes.len())) {
                got.extend(parser.push(&bytes[start..p]).unwrap());
                start = p;
            }
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_never_exceed_the_bound(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            limit in 1usize..512,
        ) {
            let mut parser = SseParser::new(limit);
            for chunk in chunks {
                match parser.push(&chunk) {
                    Ok(events) => {
                        for e in events {
                            prop_assert!(e.data.len() <= limit * 3 + 3);
                        }
                        prop_assert!(parser.pending() <= limit * 3 + 3);
                    }
                    Err(e) => {
                        prop_assert_eq!(e.limit, limit);
                        break;
                    }
                }
            }
        }

        #[test]
        fn huge_and_empty_lines_and_invalid_utf8_are_survived(
            size in 0usize..200_000,
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut parser = SseParser::new(100_000);
            let mut wire = b"data: ".to_vec();
            wire.extend(std::iter::repeat_n(b'x', size));
            wire.extend_from_slice(b"\n\n\n\n");
            wire.extend_from_slice(b"data: ");
            wire.extend(junk.iter().filter(|b| **b != b'\n' && **b != b'\r'));
            wire.extend_from_slice(b"\n\n");
            match parser.push(&wire) {
                Ok(events) => {
                    prop_assert!(size + 6 <= 100_000);
                    prop_assert_eq!(events.len(), 2);
                    prop_assert_eq!(events[0].data.len(), size);
                }
                Err(_) => prop_assert!(size + 6 > 100_000),
            }
        }
    }
}
