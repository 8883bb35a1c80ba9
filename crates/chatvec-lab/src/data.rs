//! The lab's data: a procedurally generated English corpus, the Korean corpus split into
//! training and held-out text, and chat dialogs of a small task family.
//!
//! Everything here is a pure function of a seed, so `chatvec lab data` rewrites `data/lab/`
//! byte for byte.

use std::fmt::Write as _;
use std::path::Path;

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

pub use chatvec_gen::sampling::Rng;

/// The draws the lab needs, on top of the workspace's one seeded generator
/// ([`chatvec_gen::sampling::Rng`], xoshiro256**).
pub trait Draw {
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize;
    /// A uniformly chosen element of a non-empty slice.
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T;
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64;
    /// Fisher-Yates shuffle.
    fn shuffle<T>(&mut self, items: &mut [T]);
}

impl Draw for Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(1e-300);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// English prose from a small grammar (the project's own text, MIT OR Apache-2.0).

const NAMES: &[&str] = &[
    "Anna", "Ben", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Laura", "Mark", "Nora",
    "Oscar", "Paul", "Rose", "Sam", "Tom", "Vera", "William",
];
const NOUNS: &[&str] = &[
    "farmer",
    "teacher",
    "child",
    "doctor",
    "sailor",
    "baker",
    "student",
    "king",
    "queen",
    "dog",
    "cat",
    "bird",
    "horse",
    "river",
    "mountain",
    "village",
    "city",
    "garden",
    "forest",
    "house",
    "road",
    "bridge",
    "school",
    "market",
    "ship",
    "letter",
    "book",
    "song",
    "story",
    "window",
    "door",
    "table",
    "lamp",
    "stone",
    "tree",
    "flower",
    "apple",
    "bread",
    "river",
    "friend",
    "neighbour",
    "traveller",
    "painter",
    "writer",
    "judge",
    "court",
    "law",
    "license",
    "program",
    "computer",
    "software",
    "copy",
    "notice",
    "work",
    "right",
    "people",
    "country",
];
const ADJECTIVES: &[&str] = &[
    "old", "young", "small", "large", "quiet", "busy", "happy", "tired", "bright", "dark", "warm", "cold", "green",
    "red", "blue", "white", "long", "short", "new", "free", "strong", "gentle", "careful", "clever", "simple", "early",
    "late", "public", "open", "heavy",
];
const VERBS_T: &[(&str, &str)] = &[
    ("sees", "saw"),
    ("finds", "found"),
    ("likes", "liked"),
    ("builds", "built"),
    ("paints", "painted"),
    ("reads", "read"),
    ("writes", "wrote"),
    ("carries", "carried"),
    ("opens", "opened"),
    ("follows", "followed"),
    ("visits", "visited"),
    ("remembers", "remembered"),
    ("copies", "copied"),
    ("sells", "sold"),
    ("buys", "bought"),
    ("keeps", "kept"),
    ("helps", "helped"),
    ("watches", "watched"),
];
const VERBS_I: &[(&str, &str)] = &[
    ("sleeps", "slept"),
    ("walks", "walked"),
    ("sings", "sang"),
    ("waits", "waited"),
    ("works", "worked"),
    ("laughs", "laughed"),
    ("runs", "ran"),
    ("rests", "rested"),
    ("travels", "travelled"),
    ("listens", "listened"),
];
const PLACES: &[&str] = &[
    "in the garden",
    "near the river",
    "at the market",
    "on the bridge",
    "in the old house",
    "by the window",
    "under the tree",
    "in the city",
    "at school",
    "on the road",
    "in the forest",
    "at the court",
];
const TIMES: &[&str] = &[
    "in the morning",
    "at night",
    "every day",
    "on Sunday",
    "after dinner",
    "in the spring",
    "in winter",
    "before noon",
    "all day",
    "last year",
];
const ADVERBS: &[&str] = &["slowly", "quickly", "quietly", "often", "always", "never", "again", "carefully", "gladly"];
const CONNECT: &[&str] = &["and then", "but", "so", "because", "while", "after that"];

fn noun_phrase(r: &mut Rng) -> String {
    match r.below(4) {
        0 => r.pick(NAMES).to_string(),
        1 => format!("the {}", r.pick(NOUNS)),
        2 => format!("the {} {}", r.pick(ADJECTIVES), r.pick(NOUNS)),
        _ => format!("a {} {}", r.pick(ADJECTIVES), r.pick(NOUNS)),
    }
}

fn clause(r: &mut Rng, past: bool) -> String {
    let subject = noun_phrase(r);
    let mut s = if r.below(3) == 0 {
        let (present, pastf) = *r.pick(VERBS_I);
        format!("{subject} {}", if past { pastf } else { present })
    } else {
        let (present, pastf) = *r.pick(VERBS_T);
        format!("{subject} {} {}", if past { pastf } else { present }, noun_phrase(r))
    };
    if r.below(3) == 0 {
        write!(s, " {}", r.pick(ADVERBS)).unwrap();
    }
    if r.below(2) == 0 {
        write!(s, " {}", r.pick(PLACES)).unwrap();
    }
    if r.below(3) == 0 {
        write!(s, " {}", r.pick(TIMES)).unwrap();
    }
    s
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// How much of the English corpus rewards copying: echoed lists of random words, the only
/// text whose continuation can be predicted by copying alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CopyMix {
    /// Percent of sentences that are an echoed word list.
    pub echoed_percent: usize,
    /// Fewest words in a list.
    pub min_words: usize,
    /// Most words in a list.
    pub max_words: usize,
}

impl Default for CopyMix {
    /// The mix `data/lab/english.txt` is written with.
    fn default() -> Self {
        CopyMix { echoed_percent: 50, min_words: 2, max_words: 8 }
    }
}

/// A quoted list of random `words`, written twice: the only way to predict the second copy is
/// to copy the first, so this is where the base learns to copy arbitrary text (induction), the
/// ability the chat tasks rely on, before any chat tuning.
fn echoed_word_list(r: &mut Rng, words: &[String], mix: &CopyMix) -> String {
    let n = mix.min_words + r.below(mix.max_words - mix.min_words + 1);
    let list = (0..n).map(|_| r.pick(words).as_str()).collect::<Vec<_>>().join(" ");
    let (who, other) = (capitalise(&noun_phrase(r)), noun_phrase(r));
    match r.below(3) {
        0 => format!("{who} wrote down the words \"{list}\" and {other} read them back: \"{list}\"."),
        1 => format!("{who} said: \"{list}.\" {} repeated: \"{list}.\"", capitalise(&other)),
        _ => format!("The note said \"{list}\", so {other} copied \"{list}\" again."),
    }
}

/// One English sentence; `words` are the grammar's words ([`english_words`]).
pub fn english_sentence(r: &mut Rng, words: &[String], mix: &CopyMix) -> String {
    if r.below(100) < mix.echoed_percent {
        return echoed_word_list(r, words, mix);
    }
    let past = r.below(2) == 0;
    let mut s = clause(r, past);
    if r.below(3) == 0 {
        write!(s, " {} {}", r.pick(CONNECT), clause(r, past)).unwrap();
    }
    let end = if r.below(8) == 0 { "!" } else { "." };
    if r.below(5) == 0 {
        // Quoted speech, often echoed word for word: the repeats are where a small model learns
        // to copy (induction), the ability the chat tasks rely on.
        let said = capitalise(&clause(r, false));
        let speaker = capitalise(&noun_phrase(r));
        if r.below(2) == 0 {
            return format!("{speaker} said: \"{said}.\" {} repeated: \"{said}.\"", capitalise(&noun_phrase(r)));
        }
        return format!("{speaker} said: \"{said}.\"");
    }
    format!("{}{end}", capitalise(&s))
}

/// English prose of about `bytes` bytes: paragraphs of 3..8 sentences separated by blank lines.
pub fn english_corpus(seed: u64, bytes: usize, mix: &CopyMix) -> String {
    let mut r = Rng::new(seed);
    let words = english_words();
    let mut out = String::new();
    while out.len() < bytes {
        let n = 3 + r.below(6);
        let sentences: Vec<String> = (0..n).map(|_| english_sentence(&mut r, &words, mix)).collect();
        out.push_str(&sentences.join(" "));
        out.push_str("\n\n");
    }
    out
}

/// The words of the English grammar (content words for dialogs).
pub fn english_words() -> Vec<String> {
    let mut w: Vec<String> =
        NAMES.iter().chain(NOUNS).chain(ADJECTIVES).chain(ADVERBS).map(|s| s.to_string()).collect();
    w.extend(VERBS_T.iter().chain(VERBS_I).flat_map(|(a, b)| [a.to_string(), b.to_string()]));
    w.sort();
    w.dedup();
    w
}

// ---------------------------------------------------------------------------------------------
// Korean text.

/// Files of `data/korean/` held out from training (perplexity and dialog content).
pub const KOREAN_HELD_OUT: &[&str] = &["kobill/1809898.txt", "kobill/1809899.txt"];

/// The Korean corpus split: (training documents, held-out documents), CRLF normalised.
pub fn korean_split(dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let mut files = vec!["constitution.txt".to_string()];
    let mut bills: Vec<String> = std::fs::read_dir(dir.join("kobill"))
        .map_err(|e| Error::io(dir.join("kobill"), e))?
        .filter_map(|e| e.ok())
        .map(|e| format!("kobill/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".txt"))
        .collect();
    bills.sort();
    files.extend(bills);
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for f in files {
        let path = dir.join(&f);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let text = text.replace("\r\n", "\n");
        if KOREAN_HELD_OUT.contains(&f.as_str()) {
            held.push(text);
        } else {
            train.push(text);
        }
    }
    Ok((train, held))
}

/// Distinct all-Hangul words (2..=6 syllables) of `texts`, in first-seen order.
pub fn korean_words(texts: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for t in texts {
        for w in t.split_whitespace() {
            let n = w.chars().count();
            if (2..=6).contains(&n) && w.chars().all(chatvec_eval::metrics::is_hangul) && seen.insert(w.to_string()) {
                out.push(w.to_string());
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The task family.

/// What the user asks about a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Repeat the text.
    Repeat,
    /// Its first word.
    FirstWord,
    /// Its last word.
    LastWord,
    /// The words in reverse order.
    Reverse,
    /// The number of words.
    Count,
}

impl Task {
    /// All tasks, in report order.
    pub const ALL: [Task; 5] = [Task::Repeat, Task::FirstWord, Task::LastWord, Task::Reverse, Task::Count];

    /// The instruction line of the user message.
    pub fn instruction(self) -> &'static str {
        match self {
            Task::Repeat => "Repeat the text.",
            Task::FirstWord => "What is the first word of the text?",
            Task::LastWord => "What is the last word of the text?",
            Task::Reverse => "Write the words of the text in reverse order.",
            Task::Count => "How many words are in the text?",
        }
    }

    /// The correct answer for `words`.
    pub fn answer(self, words: &[String]) -> String {
        match self {
            Task::Repeat => words.join(" "),
            Task::FirstWord => words.first().cloned().unwrap_or_default(),
            Task::LastWord => words.last().cloned().unwrap_or_default(),
            Task::Reverse => words.iter().rev().cloned().collect::<Vec<_>>().join(" "),
            Task::Count => words.len().to_string(),
        }
    }
}

/// One user turn and its correct assistant answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dialog {
    /// Which task.
    pub task: Task,
    /// The user's message: the instruction, a newline, the text.
    pub user: String,
    /// The exact expected answer.
    pub answer: String,
}

impl Dialog {
    /// The dialog for `task` on `words`.
    pub fn new(task: Task, words: &[String]) -> Self {
        Dialog { task, user: format!("{}\n{}", task.instruction(), words.join(" ")), answer: task.answer(words) }
    }
}

/// `n` dialogs over texts of 2..=5 words drawn from `vocab`, tasks in turn.
pub fn dialogs(seed: u64, vocab: &[String], n: usize) -> Vec<Dialog> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|i| {
            let len = 2 + r.below(4);
            let words: Vec<String> = (0..len).map(|_| r.pick(vocab).clone()).collect();
            Dialog::new(Task::ALL[i % Task::ALL.len()], &words)
        })
        .collect()
}

/// The Llama-3 chat format the chat model is trained on (the same string the fixture template
/// renders): BOS, the user turn, the assistant header. The answer follows, then `<|eot_id|>`.
pub fn chat_prompt(user: &str) -> String {
    format!(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n",
        user.trim()
    )
}

/// Writes dialogs as JSON lines.
pub fn write_jsonl(path: &Path, dialogs: &[Dialog]) -> Result<()> {
    let mut s = String::new();
    for d in dialogs {
        s.push_str(&serde_json::to_string(d)?);
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// Reads dialogs from JSON lines.
pub fn read_jsonl(path: &Path) -> Result<Vec<Dialog>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| Error::Json { path: path.into(), line: Some(i + 1), source })
        })
        .collect()
}

/// Seeds of the fixed data sets (independent of the model seeds).
pub const ENGLISH_SEED: u64 = 1;
/// Seed of the English training dialogs.
pub const CHAT_TRAIN_SEED: u64 = 2;
/// Seed of the held-out English-content dialogs.
pub const CHAT_EVAL_EN_SEED: u64 = 3;
/// Seed of the held-out Korean-content dialogs.
pub const CHAT_EVAL_KO_SEED: u64 = 4;

/// Writes the lab's data sets into `out`: `english.txt`, `chat_train.jsonl` (English content),
/// `chat_eval_en.jsonl`, `chat_eval_ko.jsonl` (content words from held-out Korean text).
pub fn write_data(korean_dir: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let english = out.join("english.txt");
    std::fs::write(&english, english_corpus(ENGLISH_SEED, 800_000, &CopyMix::default()))
        .map_err(|e| Error::io(&english, e))?;
    let en = english_words();
    // Held-out English content: every 5th word is kept out of the training dialogs.
    let (en_eval, en_train): (Vec<_>, Vec<_>) = en.iter().cloned().enumerate().partition(|(i, _)| i % 5 == 0);
    let en_train: Vec<String> = en_train.into_iter().map(|(_, w)| w).collect();
    let en_eval: Vec<String> = en_eval.into_iter().map(|(_, w)| w).collect();
    write_jsonl(&out.join("chat_train.jsonl"), &dialogs(CHAT_TRAIN_SEED, &en_train, 6000))?;
    write_jsonl(&out.join("chat_eval_en.jsonl"), &dialogs(CHAT_EVAL_EN_SEED, &en_eval, 50))?;
    let (_, held) = korean_split(korean_dir)?;
    write_jsonl(&out.join("chat_eval_ko.jsonl"), &dialogs(CHAT_EVAL_KO_SEED, &korean_words(&held), 100))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn task_answers_are_correct_on_hand_checked_cases() {
        let words = w("국회 법률 개정 이유");
        assert_eq!(Task::Repeat.answer(&words), "국회 법률 개정 이유");
        assert_eq!(Task::FirstWord.answer(&words), "국회");
        assert_eq!(Task::LastWord.answer(&words), "이유");
        assert_eq!(Task::Reverse.answer(&words), "이유 개정 법률 국회");
        assert_eq!(Task::Count.answer(&words), "4");
        let d = Dialog::new(Task::Reverse, &w("the old dog"));
        assert_eq!(d.user, "Write the words of the text in reverse order.\nthe old dog");
        assert_eq!(d.answer, "dog old the");
    }

    #[test]
    fn generators_are_deterministic() {
        assert_eq!(english_corpus(7, 2000, &CopyMix::default()), english_corpus(7, 2000, &CopyMix::default()));
        assert_ne!(english_corpus(7, 2000, &CopyMix::default()), english_corpus(8, 2000, &CopyMix::default()));
        let v = english_words();
        assert_eq!(dialogs(3, &v, 20), dialogs(3, &v, 20));
    }

    #[test]
    fn dialog_answers_match_their_text() {
        for d in dialogs(5, &english_words(), 50) {
            let text: Vec<String> = d.user.lines().nth(1).unwrap().split(' ').map(str::to_string).collect();
            assert!((2..=5).contains(&text.len()));
            assert_eq!(d.task.answer(&text), d.answer);
        }
    }

    #[test]
    fn the_corpus_echoes_word_lists_in_the_copy_probes_form() {
        // eval::copy_rate prompts with `Anna said: "LIST." Tom repeated: "`: the corpus must hold
        // that form, with LIST echoed word for word.
        let text = english_corpus(ENGLISH_SEED, 20_000, &CopyMix::default());
        let words = english_words();
        let echoed = text
            .split(" said: \"")
            .skip(1)
            .filter_map(|rest| {
                let (list, after) = rest.split_once(".\" ")?;
                let again = after.split_once(" repeated: \"")?.1.split_once(".\"")?.0;
                Some((list, again))
            })
            .filter(|(list, again)| list == again && list.split(' ').all(|w| words.contains(&w.to_string())))
            .count();
        assert!(echoed >= 10, "{echoed} echoed word lists in 20 kB");
    }

    #[test]
    fn korean_words_are_hangul_only() {
        let ws = korean_words(&["제1조 대한민국은 민주공화국이다. 국민 (국회)".to_string()]);
        assert_eq!(ws, vec!["대한민국은".to_string(), "국민".to_string()]);
    }

    #[test]
    fn chat_prompt_matches_the_fixture_template() {
        assert_eq!(
            chat_prompt("hi "),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }
}
