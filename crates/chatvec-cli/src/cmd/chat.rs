//! `chatvec chat`: a multi-turn conversation in the terminal, or over piped stdin (one user
//! message per line, one answer per line out). A line that cannot be answered (longer than the
//! context can hold, not UTF-8, refused by the template) is skipped with an error, the chat goes
//! on, and the exit status is 1 at the end.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use chatvec_gen::{GenerationConfig, Message};

use super::common::terminal_safe;
use super::generate::{ModelArgs, SamplingArgs, Session};

/// Chat arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System prompt (change it in the chat with /system TEXT).
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature (default: generation_config.json's).
    #[arg(long, conflicts_with = "greedy")]
    pub temperature: Option<f64>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print token counts and speed to stderr after each answer.
    #[arg(long)]
    pub stats: bool,
}

const HELP: &str = "/reset clears the history, /system TEXT sets the system prompt (and clears \
                    the history), /exit leaves; Ctrl-C stops an answer";

/// What a line of input asks for.
#[derive(Debug, PartialEq, Eq)]
enum Input<'a> {
    Say(&'a str),
    Reset,
    System(&'a str),
    Exit,
    Unknown(&'a str),
    Nothing,
}

fn parse(line: &str) -> Input<'_> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() {
        return Input::Nothing;
    }
    let Some(command) = line.strip_prefix('/') else {
        return Input::Say(line);
    };
    let (name, rest) = command.split_once(char::is_whitespace).unwrap_or((command, ""));
    match name {
        "exit" | "quit" => Input::Exit,
        "reset" => Input::Reset,
        "system" => Input::System(rest.trim()),
        _ => Input::Unknown(name),
    }
}

/// One line of input, read with its length bounded.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// The end of the input.
    End,
    /// A line (its newline kept), within the bound.
    Text(String),
    /// A line over the bound, of this many bytes, read past without keeping it.
    TooLong(usize),
    /// A line that is not UTF-8 text.
    NotText,
}

/// Reads the next line of `input`, keeping at most `max` bytes of it in memory: a longer line
/// is consumed in buffer-sized steps and reported by its length.
fn read_line_bounded(input: &mut impl BufRead, max: usize) -> std::io::Result<Line> {
    let mut bytes = Vec::new();
    if Read::take(&mut *input, max as u64 + 1).read_until(b'\n', &mut bytes)? == 0 {
        return Ok(Line::End);
    }
    if bytes.len() > max && bytes.last() != Some(&b'\n') {
        let mut skipped = bytes.len();
        loop {
            let buf = input.fill_buf()?;
            let (used, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), buf.is_empty()),
            };
            input.consume(used);
            skipped += used;
            if done {
                return Ok(Line::TooLong(skipped));
            }
        }
    }
    Ok(String::from_utf8(bytes).map_or(Line::NotText, Line::Text))
}

/// The conversation so far and the settings it is answered with.
struct Conversation<'a> {
    args: &'a Args,
    session: Session,
    system: Option<String>,
    history: Vec<Message>,
    seed: u64,
    turn: u64,
}

impl Conversation<'_> {
    /// Answers `text` on stdout. An error about this message alone (the template rejects the
    /// conversation, the prompt does not fit the context) is returned as `Ok(Err(..))` and the
    /// message is dropped from the history; an error of the model or the output ends the chat.
    fn say(&mut self, text: &str, generating: &AtomicBool, interrupt: &AtomicBool) -> Result<Result<(), String>> {
        self.history.push(Message::new("user", text));
        let mut messages: Vec<Message> = self.system.iter().map(|s| Message::new("system", s.as_str())).collect();
        messages.extend(self.history.iter().cloned());
        let sampling = &self.args.sampling;
        let prompt = self
            .session
            .template()?
            .render(&messages, true)
            .map_err(anyhow::Error::from)
            .and_then(|t| self.session.encode_prompt(&t, sampling.truncate, sampling.max_new_tokens));
        let prompt = match prompt {
            Ok(p) => p,
            Err(e) => {
                self.history.pop();
                return Ok(Err(format!("{e:#}")));
            }
        };
        let config = GenerationConfig {
            max_new_tokens: sampling.max_new_tokens,
            sampling: sampling.params(
                &self.session.defaults,
                self.args.temperature,
                self.seed.wrapping_add(self.turn),
            )?,
        };
        self.turn += 1;
        generating.store(true, Ordering::SeqCst);
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let result = self.session.answer(&prompt, &config, Some(&mut lock), interrupt);
        generating.store(false, Ordering::SeqCst);
        interrupt.store(false, Ordering::SeqCst);
        let (out, text) = result?;
        writeln!(lock)?;
        lock.flush()?;
        drop(lock);
        if self.args.stats {
            eprintln!("{}", terminal_safe(&self.session.stats_line(&out, config.max_new_tokens)));
        }
        self.history.push(Message::new("assistant", text));
        Ok(Ok(()))
    }
}

/// Runs `chatvec chat`.
pub fn run(a: Args) -> Result<ExitCode> {
    let seed = a.sampling.seed();
    a.sampling.params(&Default::default(), a.temperature, seed)?;
    let session = Session::open(&a.model)?;
    let interactive = std::io::stdin().is_terminal();

    // Ctrl-C stops the answer being written (through the interrupt flag, cleared after each
    // answer); at the prompt it leaves.
    let generating = Arc::new(AtomicBool::new(false));
    let interrupt = super::common::interrupt_flag();
    {
        let generating = generating.clone();
        super::common::on_ctrl_c(move || {
            if !generating.load(Ordering::SeqCst) {
                eprintln!();
                std::process::exit(130);
            }
        })?;
    }

    if interactive {
        eprintln!(
            "chatvec chat: {} ({}, {}). {HELP}.",
            terminal_safe(&session.chat.dir.display().to_string()),
            session.chat.model.architecture(),
            session.device_name
        );
    }
    // No line longer than this can fit the context (see `Session::encode_prompt`).
    let max_line = session.chat.model.config().max_position_embeddings.saturating_mul(session.longest_token * 2);
    let system = a.system.clone().filter(|s| !s.is_empty());
    let mut chat = Conversation { args: &a, session, system, history: vec![], seed, turn: 0 };
    let mut stdin = std::io::stdin().lock();
    let (mut number, mut skipped) = (0u64, 0u64);
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        number += 1;
        let line = match read_line_bounded(&mut stdin, max_line)? {
            Line::End => {
                if interactive {
                    eprintln!();
                }
                break;
            }
            Line::Text(line) => line,
            Line::TooLong(bytes) => {
                skipped += 1;
                eprintln!("error: line {number}: {bytes} bytes, more than the model's context can hold; skipped");
                continue;
            }
            Line::NotText => {
                skipped += 1;
                eprintln!("error: line {number}: not UTF-8 text; skipped");
                continue;
            }
        };
        match parse(&line) {
            Input::Nothing => continue,
            Input::Exit => break,
            Input::Reset => {
                chat.history.clear();
                eprintln!("(history cleared)");
            }
            Input::System(text) => {
                chat.system = (!text.is_empty()).then(|| text.to_string());
                chat.history.clear();
                eprintln!("(system prompt set, history cleared)");
            }
            Input::Unknown(name) => eprintln!("unknown command /{}: {HELP}", terminal_safe(name)),
            Input::Say(text) => {
                if let Err(why) = chat.say(text, &generating, &interrupt)? {
                    skipped += 1;
                    eprintln!("error: line {number}: {}; skipped", terminal_safe(&why));
                }
            }
        }
    }
    if skipped > 0 {
        eprintln!("error: {skipped} line(s) could not be answered and were skipped");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_recognised() {
        assert_eq!(parse("안녕?\n"), Input::Say("안녕?"));
        assert_eq!(parse("/reset\n"), Input::Reset);
        assert_eq!(parse("/system 한국어로 답해\r\n"), Input::System("한국어로 답해"));
        assert_eq!(parse("/system\n"), Input::System(""));
        assert_eq!(parse("/exit"), Input::Exit);
        assert_eq!(parse("/frobnicate x"), Input::Unknown("frobnicate"));
        assert_eq!(parse("   \n"), Input::Nothing);
    }

    #[test]
    fn a_line_over_the_bound_is_skipped_whole_and_the_next_is_read() {
        let text = format!("{}\nhi\n\u{ff}x\nlast", "a".repeat(10_000));
        let mut input = std::io::BufReader::with_capacity(64, text.as_bytes());
        let read = |input: &mut std::io::BufReader<&[u8]>| read_line_bounded(input, 100).unwrap();
        assert_eq!(read(&mut input), Line::TooLong(10_001));
        assert_eq!(read(&mut input), Line::Text("hi\n".into()));
        assert_eq!(read(&mut input), Line::Text("\u{ff}x\n".into()));
        assert_eq!(read(&mut input), Line::Text("last".into()));
        assert_eq!(read(&mut input), Line::End);
        let mut bad: &[u8] = b"\xff\xfe\n";
        assert_eq!(read_line_bounded(&mut bad, 100).unwrap(), Line::NotText);
    }
}
