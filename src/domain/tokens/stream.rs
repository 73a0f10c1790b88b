//! Counting a streamed answer as it goes, in bounded memory: deltas are buffered up to a
//! few KiB and tokenized up to a cut where tiktoken's pre-tokenizer cuts anyway, the rest
//! kept for the next deltas. A short answer is never tokenized unless asked for its total
//! (when its vendor sends usage, it never is).

use super::Encoding;
use crate::domain::canonical::ChatEvent;

/// Text held before it is tokenized.
const BUFFER_BYTES: usize = 4096;

/// Where streamed text belongs: tokens never straddle two of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Text,
    ToolName,
    ToolArguments(usize),
}

/// The tokens of what has been streamed so far: answer text and tool calls (names and
/// arguments).
#[derive(Debug)]
pub struct StreamCounter {
    encoding: Encoding,
    buffer_bytes: usize,
    channel: Channel,
    /// Text not tokenized yet, never more than `buffer_bytes`.
    pending: String,
    counted: u64,
}

impl StreamCounter {
    pub fn new(encoding: Encoding) -> Self {
        Self::with_buffer(encoding, BUFFER_BYTES)
    }

    fn with_buffer(encoding: Encoding, buffer_bytes: usize) -> Self {
        Self {
            encoding,
            buffer_bytes: buffer_bytes.max(16),
            channel: Channel::Text,
            pending: String::new(),
            counted: 0,
        }
    }

    /// Takes in what one event streamed.
    pub fn observe(&mut self, event: &ChatEvent) {
        match event {
            ChatEvent::Text(text) => self.push(Channel::Text, text),
            ChatEvent::ToolCallStart { name, .. } => self.push(Channel::ToolName, name),
            ChatEvent::ToolCallArguments { index, delta } => {
                self.push(Channel::ToolArguments(*index), delta);
            }
            ChatEvent::Start { .. }
            | ChatEvent::Usage(_)
            | ChatEvent::Finish(_)
            | ChatEvent::Done => {}
        }
    }

    /// Tokens of everything streamed so far.
    pub fn total(&self) -> u64 {
        self.counted + self.encoding.count(&self.pending)
    }

    fn push(&mut self, channel: Channel, mut text: &str) {
        if channel != self.channel || channel == Channel::ToolName {
            self.counted += self.encoding.count(&self.pending);
            self.pending.clear();
            self.channel = channel;
        }
        while !text.is_empty() {
            let room = self.buffer_bytes - self.pending.len();
            if text.len() <= room {
                self.pending.push_str(text);
                break;
            }
            let take = (0..=room)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            self.pending.push_str(&text[..take]);
            text = &text[take..];
            self.tokenize_head();
        }
        if self.pending.len() >= self.buffer_bytes {
            self.tokenize_head();
        }
    }

    /// Tokenizes the buffer up to its last safe cut, and keeps the rest. A cut is safe
    /// before a space that follows a non-blank: there tiktoken's pre-tokenizer always
    /// starts a new piece (" word", " 1", " ."), so counting both sides apart gives the
    /// count of the whole. A buffer with no such cut in its second half (a long run of
    /// CJK text, base64, a row of one character) is tokenized whole: an error of a token
    /// or so per buffer, which keeps the memory bounded whatever the text.
    fn tokenize_head(&mut self) {
        let cut = safe_cut(&self.pending).filter(|&cut| cut >= self.pending.len() / 2);
        match cut {
            Some(cut) => {
                self.counted += self.encoding.count(&self.pending[..cut]);
                self.pending.drain(..cut);
            }
            None => {
                self.counted += self.encoding.count(&self.pending);
                self.pending.clear();
            }
        }
    }
}

/// The last position in `text` of a space that follows a non-blank character.
fn safe_cut(text: &str) -> Option<usize> {
    text.rmatch_indices(' ').map(|(i, _)| i).find(|&i| {
        text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| !c.is_whitespace())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn streamed(encoding: Encoding, buffer: usize, chunks: &[&str]) -> u64 {
        let mut counter = StreamCounter::with_buffer(encoding, buffer);
        for chunk in chunks {
            counter.observe(&ChatEvent::Text((*chunk).to_string()));
        }
        assert!(counter.pending.len() <= buffer.max(16));
        counter.total()
    }

    /// Splits `text` into pieces at the given char offsets.
    fn split<'a>(text: &'a str, cuts: &[usize]) -> Vec<&'a str> {
        let chars: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let mut bounds: Vec<usize> = cuts
            .iter()
            .filter_map(|c| chars.get(c % chars.len().max(1)).copied())
            .collect();
        bounds.push(0);
        bounds.push(text.len());
        bounds.sort_unstable();
        bounds.dedup();
        bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect()
    }

    #[test]
    fn safe_cuts_are_spaces_after_a_non_blank() {
        assert_eq!(safe_cut("hello world"), Some(5));
        assert_eq!(safe_cut("a  b"), Some(1));
        assert_eq!(safe_cut("  "), None);
        assert_eq!(safe_cut("x\n y"), None);
        assert_eq!(safe_cut("中文 字"), Some(6));
    }

    #[test]
    fn tool_calls_count_their_names_and_arguments_apart_from_the_text() {
        let encoding = Encoding::Cl100k;
        let mut counter = StreamCounter::new(encoding);
        for event in [
            ChatEvent::Text("Let me check".into()),
            ChatEvent::ToolCallStart {
                index: 0,
                id: "call_1".into(),
                name: "get_weather".into(),
            },
            ChatEvent::ToolCallArguments {
                index: 0,
                delta: "{\"city\":".into(),
            },
            ChatEvent::ToolCallArguments {
                index: 0,
                delta: "\"Paris\"}".into(),
            },
            ChatEvent::Finish(crate::domain::canonical::FinishReason::ToolCalls),
        ] {
            counter.observe(&event);
        }
        let expected = encoding.count("Let me check")
            + encoding.count("get_weather")
            + encoding.count("{\"city\":\"Paris\"}");
        assert_eq!(counter.total(), expected);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Prose (a space after every word, words far shorter than half the buffer)
        /// streamed in arbitrary pieces through a small buffer counts exactly what the
        /// whole text does.
        #[test]
        fn prose_streamed_in_pieces_counts_as_the_whole(
            words in proptest::collection::vec("[a-zA-Zé中'0-9]{1,12}[.,!?]?", 1..300),
            seps in proptest::collection::vec(prop_oneof![Just(" "), Just("  "), Just(" \n"), Just(" \n\n"), Just(" \t")], 1..8),
            cuts in proptest::collection::vec(0usize..4000, 0..60),
            buffer in 128usize..512,
        ) {
            let text: String = words
                .iter()
                .enumerate()
                .map(|(i, w)| format!("{w}{}", seps[i % seps.len()]))
                .collect();
            for encoding in [Encoding::Cl100k, Encoding::O200k] {
                let whole = encoding.count(&text);
                prop_assert_eq!(streamed(encoding, buffer, &split(&text, &cuts)), whole);
            }
        }

        /// Any text, even with long runs that offer no safe cut, stays within half a
        /// percent of the whole (or one token).
        #[test]
        fn any_text_streamed_stays_within_half_a_percent(
            text in "([a-z]{1,300}|[ \n]{1,5}|[中文字]{1,200}|[0-9+/=]{1,100}){1,40}",
            cuts in proptest::collection::vec(0usize..20000, 0..80),
        ) {
            for encoding in [Encoding::Cl100k, Encoding::O200k] {
                let whole = encoding.count(&text);
                let counted = streamed(encoding, BUFFER_BYTES, &split(&text, &cuts));
                prop_assert!(counted.abs_diff(whole) * 200 <= whole.max(200), "{} vs {}", counted, whole);
            }
        }
    }
}
