//! The text of one answer as tokens arrive: incremental detokenization, then the request's stop
//! strings, which end the answer before the string (as vLLM does). Text that could be the start
//! of a stop string is held back until it is known not to be one.

use chatvec_gen::{GenError, ModelTokenizer, TextStream};

/// The text given out so far, and what is held back.
pub struct AnswerText {
    stream: TextStream<'static>,
    stops: Vec<String>,
    held: String,
    /// Whether a stop string ended the answer.
    pub stopped: bool,
}

impl AnswerText {
    /// An empty answer decoded by `tokenizer`, ending at any of `stops`.
    pub fn new(tokenizer: &'static ModelTokenizer, stops: Vec<String>) -> Self {
        AnswerText { stream: tokenizer.stream(), stops, held: String::new(), stopped: false }
    }

    /// Adds a generated token; returns the text that may be given out now.
    pub fn push(&mut self, token: u32) -> Result<String, GenError> {
        if self.stopped {
            return Ok(String::new());
        }
        let chunk = self.stream.step(token)?.unwrap_or_default();
        Ok(self.release(chunk))
    }

    /// Ends the answer: the rest of the text (bytes the decoder held and text held for stops).
    pub fn finish(&mut self) -> Result<String, GenError> {
        if self.stopped {
            return Ok(String::new());
        }
        let rest = self.stream.finish()?.unwrap_or_default();
        let mut out = self.release(rest);
        if !self.stopped {
            out.push_str(&std::mem::take(&mut self.held));
        }
        Ok(out)
    }

    /// Appends `chunk` to the held text and gives out what can no longer be part of a stop.
    fn release(&mut self, chunk: String) -> String {
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(&chunk);
        if let Some(at) = self.stops.iter().filter_map(|s| buf.find(s.as_str())).min() {
            buf.truncate(at);
            self.stopped = true;
            return buf;
        }
        let keep = self.longest_stop_prefix_suffix(&buf);
        self.held = buf.split_off(buf.len() - keep);
        buf
    }

    /// Byte length of the longest suffix of `text` that begins some stop string.
    fn longest_stop_prefix_suffix(&self, text: &str) -> usize {
        text.char_indices()
            .map(|(i, _)| &text[i..])
            .find(|suffix| self.stops.iter().any(|s| s.starts_with(suffix)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `release` over `chunks` and returns (given out, stopped).
    fn run(stops: &[&str], chunks: &[&str]) -> (String, bool) {
        let tok = Box::leak(Box::new(test_tokenizer()));
        let mut a = AnswerText::new(tok, stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for c in chunks {
            out.push_str(&a.release(c.to_string()));
        }
        if !a.stopped {
            out.push_str(&std::mem::take(&mut a.held));
        }
        (out, a.stopped)
    }

    fn test_tokenizer() -> ModelTokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama-tiny/tokenizer");
        ModelTokenizer::load(&dir).unwrap()
    }

    #[test]
    fn a_stop_string_split_over_chunks_ends_the_text_before_it() {
        assert_eq!(run(&["END"], &["ab", "cE", "N", "Dxyz"]), ("abc".to_string(), true));
        assert_eq!(run(&["END"], &["abE", "Nx"]), ("abENx".to_string(), false));
        assert_eq!(run(&["\n\n", "다."], &["안녕하세", "요다", ".뒤"]), ("안녕하세요".to_string(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_string(), false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(run(&["yz", "b"], &["abcxyz"]), ("a".to_string(), true));
    }
}
