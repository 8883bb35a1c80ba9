//! `chatvec chat`: a multi-turn conversation in the terminal, or over piped stdin (one user
//! message per line, one answer per line out).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use chatvec_gen::{GenerationConfig, Message};

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

/// Runs `chatvec chat`.
pub fn run(a: Args) -> Result<ExitCode> {
    let seed = a.sampling.seed();
    a.sampling.params(&Default::default(), a.temperature, seed)?;
    let mut session = Session::open(&a.model)?;
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
            session.chat.dir.display(),
            session.chat.model.architecture(),
            session.device_name
        );
    }
    let mut system = a.system.clone().filter(|s| !s.is_empty());
    let mut history: Vec<Message> = Vec::new();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut line = String::new();
    let mut turn = 0u64;
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            if interactive {
                eprintln!();
            }
            break;
        }
        match parse(&line) {
            Input::Nothing => continue,
            Input::Exit => break,
            Input::Reset => {
                history.clear();
                if interactive {
                    eprintln!("(history cleared)");
                }
            }
            Input::System(text) => {
                system = (!text.is_empty()).then(|| text.to_string());
                history.clear();
                if interactive {
                    eprintln!("(system prompt set, history cleared)");
                }
            }
            Input::Unknown(name) => eprintln!("unknown command /{name}: {HELP}"),
            Input::Say(text) => {
                history.push(Message::new("user", text));
                let mut messages: Vec<Message> = system.iter().map(|s| Message::new("system", s.as_str())).collect();
                messages.extend(history.iter().cloned());
                let prompt_text = match session.template()?.render(&messages, true) {
                    Ok(t) => t,
                    Err(e) => {
                        // A template that rejects this conversation (say, two user turns in a
                        // row after an interrupted answer) should not end the chat.
                        history.pop();
                        eprintln!("error: {e}");
                        continue;
                    }
                };
                let prompt = session.chat.tokenizer.encode(&prompt_text, false)?;
                let prompt = session.fit_context(prompt, a.sampling.truncate, a.sampling.max_new_tokens);
                let config = GenerationConfig {
                    max_new_tokens: a.sampling.max_new_tokens,
                    sampling: a.sampling.params(&session.defaults, a.temperature, seed.wrapping_add(turn))?,
                };
                turn += 1;
                generating.store(true, Ordering::SeqCst);
                let mut lock = stdout.lock();
                let result = session.answer(&prompt, &config, Some(&mut lock), &interrupt);
                generating.store(false, Ordering::SeqCst);
                interrupt.store(false, Ordering::SeqCst);
                let (out, text) = result?;
                writeln!(lock)?;
                lock.flush()?;
                drop(lock);
                if a.stats {
                    eprintln!("{}", session.stats_line(&out, config.max_new_tokens));
                }
                history.push(Message::new("assistant", text));
            }
        }
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
}
