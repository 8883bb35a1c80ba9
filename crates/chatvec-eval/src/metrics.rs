//! Text metrics of one answer: Korean ratio, 3-gram repetition, chat-header leaks.
//!
//! They are defined on the answer text alone, so any tokenizer gives the same numbers. This is
//! the one home of these measures in the workspace (the lab's evaluation uses them too).

use std::sync::OnceLock;

use regex::Regex;

/// Whether `c` is Hangul: syllables, jamo, compatibility jamo and the extended jamo blocks.
pub fn is_hangul(c: char) -> bool {
    matches!(c as u32,
        0xAC00..=0xD7A3 | 0x1100..=0x11FF | 0x3130..=0x318F | 0xA960..=0xA97F | 0xD7B0..=0xD7FF)
}

/// The answer without fenced (```) code blocks and inline `code`, whose identifiers are English
/// in any language.
pub fn strip_code(text: &str) -> String {
    static FENCED: OnceLock<Regex> = OnceLock::new();
    static INLINE: OnceLock<Regex> = OnceLock::new();
    // An unclosed fence (the answer was cut off) runs to the end.
    let fenced = FENCED.get_or_init(|| Regex::new(r"(?s)```.*?(```|\z)").expect("valid regex"));
    let inline = INLINE.get_or_init(|| Regex::new(r"`[^`\n]*`").expect("valid regex"));
    inline.replace_all(&fenced.replace_all(text, " "), " ").into_owned()
}

/// The Hangul letters and all letters (Unicode alphabetic characters) of `text` outside code:
/// the counts behind [`korean_ratio`], to pool over many answers.
pub fn hangul_letters(text: &str) -> (usize, usize) {
    let prose = strip_code(text);
    let (mut hangul, mut letters) = (0usize, 0usize);
    for c in prose.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        hangul += is_hangul(c) as usize;
    }
    (hangul, letters)
}

/// Hangul share of the letters (Unicode alphabetic characters) outside code; `None` when there
/// are no letters.
pub fn korean_ratio(text: &str) -> Option<f64> {
    let (hangul, letters) = hangul_letters(text);
    (letters > 0).then(|| hangul as f64 / letters as f64)
}

/// Share of repeated word 3-grams, `1 − distinct / total` (Welleck et al.'s rep-n with n = 3),
/// over whitespace-separated words; `None` when there are fewer than three words. A fluent
/// answer scores near 0, a looping one near 1.
pub fn repetition(text: &str) -> Option<f64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 3 {
        return None;
    }
    let grams: Vec<&[&str]> = words.windows(3).collect();
    let distinct: std::collections::HashSet<&[&str]> = grams.iter().copied().collect();
    Some(1.0 - distinct.len() as f64 / grams.len() as f64)
}

/// Chat-format markers that must not appear inside an answer: special header tokens of the
/// common templates.
pub const HEADER_MARKERS: [&str; 14] = [
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "[INST]",
    "[/INST]",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|begin_of_text|>",
    "<|end|>",
];

/// Chat-header leaks in an answer decoded with its special tokens: each marker of
/// [`HEADER_MARKERS`], plus each line that is only a role name (`assistant`, `user`, `system`,
/// optionally with a colon, as left when a template's header tokens are skipped) or starts with
/// a role prompt (`User:`, `### Assistant:`, `사용자:`, `어시스턴트:`).
pub fn header_leaks(text: &str) -> usize {
    static ROLE_LINE: OnceLock<Regex> = OnceLock::new();
    let role = ROLE_LINE.get_or_init(|| {
        Regex::new(
            r"(?mi)^[ \t]*(?:(?:assistant|user|system|model)[ \t]*:?[ \t]*$|(?:#+[ \t]*)?(?:assistant|user|human|사용자|어시스턴트|질문|답변)[ \t]*:)",
        )
        .expect("valid regex")
    });
    let markers: usize = HEADER_MARKERS.iter().map(|m| text.matches(m).count()).sum();
    markers + role.find_iter(text).count()
}

/// Removes the special-token markers (for display and the Korean ratio).
pub fn strip_markers(text: &str) -> String {
    HEADER_MARKERS.iter().fold(text.to_string(), |t, m| t.replace(m, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn korean_ratio_counts_hangul_letters_outside_code() {
        assert_eq!(korean_ratio("안녕하세요"), Some(1.0));
        assert_eq!(korean_ratio("hello"), Some(0.0));
        // 4 Hangul + 4 Latin letters; digits, spaces and punctuation are not letters.
        assert_eq!(korean_ratio("대한민국 abcd 123!"), Some(0.5));
        assert_eq!(korean_ratio("123 ... !?"), None);
        assert_eq!(korean_ratio(""), None);
        // Inline and fenced code do not count: the prose is all Hangul.
        assert_eq!(korean_ratio("파이썬 `print` 함수\n```python\nprint('hi')\n```"), Some(1.0));
        // Compatibility jamo (ㅋㅋ) are Hangul.
        assert_eq!(korean_ratio("ㅋㅋ ok"), Some(0.5));
        // An unclosed fence runs to the end.
        assert_eq!(korean_ratio("코드:\n```rust\nfn main() {"), Some(1.0));
        // The counts pool over answers: 2 of 2 letters, then 0 of 3.
        assert_eq!((hangul_letters("가나 `x`"), hangul_letters("abc")), ((2, 2), (0, 3)));
    }

    #[test]
    fn repetition_is_the_share_of_repeated_trigrams() {
        assert_eq!(repetition("a b"), None);
        assert_eq!(repetition("a b c d e"), Some(0.0));
        // 6 trigrams: abc bca cab abc bca cab → 3 distinct → 0.5.
        assert_eq!(repetition("a b c a b c a b"), Some(0.5));
        // "좋아요" ×6 → 4 trigrams, 1 distinct.
        assert_eq!(repetition("좋아요 좋아요 좋아요 좋아요 좋아요 좋아요"), Some(0.75));
    }

    #[test]
    fn header_leaks_find_markers_and_role_lines() {
        assert_eq!(header_leaks("서울은 한국의 수도입니다."), 0);
        assert_eq!(header_leaks("답입니다.<|start_header_id|>assistant<|end_header_id|>\n\n또"), 2);
        assert_eq!(header_leaks("답입니다.\nassistant\n\n또 답"), 1);
        assert_eq!(header_leaks("답\nUser: 다음 질문\n### Assistant: 네"), 2);
        assert_eq!(header_leaks("<|im_start|>user\n안녕"), 1);
        // A word inside a sentence is not a leak.
        assert_eq!(header_leaks("The assistant said hello to the user."), 0);
        assert_eq!(strip_markers("a<|eot_id|>b"), "ab");
    }
}
