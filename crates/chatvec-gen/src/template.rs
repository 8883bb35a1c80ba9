//! Chat templates rendered like transformers' `apply_chat_template`: a Jinja template from the
//! model directory, run with `trim_blocks`/`lstrip_blocks`, loop controls, Python string
//! methods, `raise_exception`, `strftime_now` and transformers' `tojson`.

use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Serialize};

use chatvec_format::modelfiles::{self, ChatTemplate as StoredTemplate};

use crate::error::{GenError, Result};
use crate::tokenizer::TokenizerConfig;

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A turn with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// Where a template was found (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// A `.jinja` file (the model's `chat_template.jinja` or `--chat-template FILE`).
    File(PathBuf),
    /// `chat_template` in `tokenizer_config.json`.
    TokenizerConfig(PathBuf),
}

/// A compiled chat template with the special tokens transformers passes to it.
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: Vec<(String, String)>,
    source: TemplateSource,
    tools: Value,
    /// Whether the model names a `tool_use` template, which renders when tools are passed.
    has_tool_use: bool,
}

const TEMPLATE_NAME: &str = "chat_template";

/// The name transformers gives the template it renders when tools are passed.
const TOOL_USE_TEMPLATE_NAME: &str = "tool_use";

/// Steps a render may take: real templates need a few thousand per message; a loop that never
/// ends stops within a second.
const TEMPLATE_FUEL: u64 = 10_000_000;

/// Stack of the rendering thread: enough for values nested as deep as the fuel lets a template
/// build them (reserved, not used, unless a template does so).
const RENDER_STACK_BYTES: usize = 1 << 30;

/// Largest rendered prompt; a template that keeps emitting text stops here instead of filling
/// memory.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

impl ChatTemplate {
    /// Finds the template of the model in `dir` as transformers does (chatvec-format's
    /// [`modelfiles::chat_template`]). `override_file` wins over it.
    pub fn for_model(dir: &Path, tokenizer: &TokenizerConfig, override_file: Option<&Path>) -> Result<Self> {
        if let Some(file) = override_file {
            return Self::from_file(file, tokenizer);
        }
        Self::stored(dir, tokenizer)?.ok_or_else(|| {
            GenError::NoChatTemplate(format!(
                "{} has no chat template (no chat_template.jinja, no `chat_template` in \
                 tokenizer_config.json); pass --chat-template FILE, or merge with chatvec, which \
                 carries the chat model's template over",
                dir.display()
            ))
        })
    }

    /// The template the model in `dir` stores, compiled with the special tokens of `tokenizer`
    /// (another model's when the template is lent to it); `None` when it stores none. Of a list
    /// of named templates, `default` renders, and `tool_use` (if named) when tools are passed.
    pub fn stored(dir: &Path, tokenizer: &TokenizerConfig) -> Result<Option<Self>> {
        let stored_error = |e: chatvec_format::Error| GenError::Template(e.to_string());
        let Some(stored) = modelfiles::chat_template(dir).map_err(stored_error)? else {
            return Ok(None);
        };
        let source = match stored {
            StoredTemplate::JinjaFile(_) => TemplateSource::File(stored.file(dir)),
            StoredTemplate::TokenizerConfig(_) => TemplateSource::TokenizerConfig(stored.file(dir)),
        };
        let default = stored.pick(dir, false).map_err(stored_error)?;
        let tool_use = stored.pick(dir, true).map_err(stored_error)?;
        let mut template = Self::compile(default.clone(), tokenizer, source)?;
        if tool_use != default {
            template.add(TOOL_USE_TEMPLATE_NAME, &tool_use)?;
        }
        Ok(Some(template))
    }

    /// Reads a template from a `.jinja` file.
    pub fn from_file(path: &Path, tokenizer: &TokenizerConfig) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| GenError::io(path, e))?;
        Self::compile(text, tokenizer, TemplateSource::File(path.to_path_buf()))
    }

    /// Compiles template text.
    pub fn compile(text: String, tokenizer: &TokenizerConfig, source: TemplateSource) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| GenError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.set_fuel(Some(TEMPLATE_FUEL));
        let special_tokens = tokenizer.special_tokens();
        let mut template = ChatTemplate { env, special_tokens, source, tools: Value::from(()), has_tool_use: false };
        template.add(TEMPLATE_NAME, &text)?;
        Ok(template)
    }

    /// Compiles `text` as the template called `name`.
    fn add(&mut self, name: &'static str, text: &str) -> Result<()> {
        self.env
            .add_template_owned(name, strip_generation_tags(text))
            .map_err(|e| GenError::Template(format!("{}: {}", source_name(&self.source), one_line(&e))))?;
        self.has_tool_use |= name == TOOL_USE_TEMPLATE_NAME;
        Ok(())
    }

    /// Where the template came from.
    pub fn source(&self) -> &TemplateSource {
        &self.source
    }

    /// Renders `messages` as transformers would with `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        self.render_values(Value::from(messages), add_generation_prompt)
    }

    /// Renders messages given as JSON (content lists, tool calls and so on pass through).
    pub fn render_json(&self, messages: &serde_json::Value, add_generation_prompt: bool) -> Result<String> {
        self.render_values(json_to_value(messages), add_generation_prompt)
    }

    /// Like [`render_json`](Self::render_json), with transformers' `tools` (a list of JSON
    /// function schemas), through the model's `tool_use` template when it names one.
    pub fn render_with_tools(
        &mut self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.tools = tools.map(json_to_value).unwrap_or(Value::from(()));
        let out = self.render_values(json_to_value(messages), add_generation_prompt);
        self.tools = Value::from(());
        out
    }

    /// Renders as if the clock read `unix_secs` (UTC) for `strftime_now`, for reproducible prompts.
    pub fn set_clock(&mut self, unix_secs: i64) {
        self.env.add_function("strftime_now", move |format: String| Value::from(strftime(&format, unix_secs)));
    }

    fn render_values(&self, messages: Value, add_generation_prompt: bool) -> Result<String> {
        let name = match self.has_tool_use && !self.tools.is_none() {
            true => TOOL_USE_TEMPLATE_NAME,
            false => TEMPLATE_NAME,
        };
        let tmpl = self.env.get_template(name).map_err(|e| GenError::Template(one_line(&e)))?;
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", messages),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", self.tools.clone()),
            ("documents", Value::from(())),
        ];
        for (name, token) in &self.special_tokens {
            ctx.push((name.as_str(), Value::from(token.as_str())));
        }
        let mut out = CappedText::default();
        // Values a template builds can nest as deep as its fuel allows, and minijinja walks
        // (and drops) them recursively: the render runs on a thread whose stack fits that.
        let rendered = std::thread::scope(|scope| {
            // The error too is read there: it holds the template's variables (debug info).
            let render = || {
                tmpl.render_captured_to(Value::from_pairs(ctx), &mut out)
                    .map(drop)
                    .map_err(|e| (e.kind(), one_line(&e)))
            };
            let thread = std::thread::Builder::new().stack_size(RENDER_STACK_BYTES).spawn_scoped(scope, render);
            thread.map_err(|e| e.to_string())?.join().map_err(|_| "the template renderer panicked".to_string())
        });
        let rendered = rendered.map_err(|e| GenError::Template(format!("{}: {e}", source_name(&self.source))))?;
        let why = match rendered {
            Ok(()) => return String::from_utf8(out.bytes).map_err(|e| GenError::Template(e.to_string())),
            Err(_) if out.overflowed => format!("the rendered prompt exceeds {} MiB", MAX_RENDERED_BYTES >> 20),
            Err((ErrorKind::OutOfFuel, _)) => {
                format!("the template did not finish within {TEMPLATE_FUEL} steps (a loop that never ends?)")
            }
            Err((_, message)) => message,
        };
        Err(GenError::Template(format!("{}: {why}", source_name(&self.source))))
    }
}

/// The rendered text, refusing to grow past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct CappedText {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered prompt too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compiles `data` (as text) as a chat template and renders a short conversation with tools:
/// the harness of the `chat_template` fuzz target and of its corpus replay test. Errors are
/// expected; a panic, a hang or unbounded memory is a bug.
#[doc(hidden)]
pub fn fuzz_render(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let source = TemplateSource::File("fuzz.jinja".into());
    let Ok(mut template) = ChatTemplate::compile(text, &TokenizerConfig::default(), source) else { return };
    let messages = serde_json::json!([
        {"role": "system", "content": "s"},
        {"role": "user", "content": "안녕 {{ x }}"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call12345", "type": "function",
            "function": {"name": "f", "arguments": {"a": 1e-07}}}]},
        {"role": "tool", "tool_call_id": "call12345", "content": "2"},
    ]);
    let tools = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let _ = template.render_with_tools(&messages, Some(&tools), true);
}

fn source_name(source: &TemplateSource) -> String {
    match source {
        TemplateSource::File(p) | TemplateSource::TokenizerConfig(p) => p.display().to_string(),
    }
}

/// minijinja errors carry a multi-line debug rendering; keep the message and location only.
fn one_line(e: &JinjaError) -> String {
    let mut msg = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    msg
}

/// transformers' `{% generation %}` marks assistant spans for training masks; it renders as
/// its body, so the tags are dropped.
fn strip_generation_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{%") {
        let Some(len) = rest[start..].find("%}") else {
            break;
        };
        let tag = &rest[start..start + len + 2];
        let inner = tag[2..tag.len() - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if inner != "generation" && inner != "endgeneration" {
            out.push_str(tag);
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

fn raise_exception(message: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC time formatted with the common strftime codes.
fn strftime_now(format: String) -> std::result::Result<Value, JinjaError> {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    Ok(Value::from(strftime(&format, secs)))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Formats a Unix time (UTC) with strftime codes %Y %y %m %d %e %H %I %M %S %p %B %b %A %a %j %%.
pub(crate) fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", (h + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('b') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)` (minijinja's own escapes HTML characters).
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators {
        Some(seps) => {
            let a = seps.get_item(&Value::from(0))?;
            let b = seps.get_item(&Value::from(1))?;
            (a.to_string(), b.to_string())
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle { indent, item_sep, key_sep, sort_keys: sort_keys.unwrap_or(false) };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from(out))
}

struct JsonStyle {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn write_json(out: &mut String, v: &Value, style: &JsonStyle, depth: usize) -> std::result::Result<(), JinjaError> {
    let too_large = || JinjaError::new(ErrorKind::InvalidOperation, "tojson output exceeds the rendered-size cap");
    if out.len() > MAX_RENDERED_BYTES {
        return Err(too_large());
    }
    if depth > 512 {
        return Err(JinjaError::new(ErrorKind::InvalidOperation, "tojson: value nested deeper than 512 levels"));
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = style.indent {
            let pad = n.saturating_mul(depth);
            if out.len().saturating_add(pad) > MAX_RENDERED_BYTES {
                return Err(too_large());
            }
            out.push('\n');
            out.push_str(&" ".repeat(pad));
        }
        Ok(())
    };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&python_float(f));
            }
        }
        ValueKind::String => write_json_string(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1)?;
                write_json(out, item, style, depth + 1)?;
            }
            newline(out, depth)?;
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if style.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1)?;
                write_json_string(out, &key.to_string());
                out.push_str(&style.key_sep);
                write_json(out, &v.get_item(key)?, style, depth + 1)?;
            }
            newline(out, depth)?;
            out.push('}');
        }
        _ => write_json_string(out, &v.to_string()),
    }
    Ok(())
}

/// A float as Python's `repr` writes it: the shortest round-trip digits, in fixed notation
/// for exponents -4..16 and otherwise as `1e-07` / `1.5e+16` (two-digit exponent with sign).
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{f:e}"); // shortest round-trip digits, e.g. "-1.5e-7"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else if point as usize >= digits.len() {
            format!("{sign}{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{sign}{}.{}", &digits[..point as usize], &digits[point as usize..])
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        format!("{sign}{first}{dot}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Converts parsed JSON into a template value.
pub(crate) fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => Value::from(()),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => items.iter().map(json_to_value).collect(),
        serde_json::Value::Object(map) => Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), json_to_value(v)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> TokenizerConfig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), json.to_string()).unwrap();
        TokenizerConfig::load(dir.path()).unwrap()
    }

    fn compile(text: &str) -> ChatTemplate {
        let tok = config(serde_json::json!({"bos_token": {"content": "<s>"}, "eos_token": "</s>"}));
        ChatTemplate::compile(text.into(), &tok, TemplateSource::File("t.jinja".into())).unwrap()
    }

    #[test]
    fn trim_and_lstrip_blocks_as_in_transformers() {
        let t = compile(
            "{{ bos_token }}\n{% for m in messages %}\n    {{ m.role }}: {{ m.content }}\n{% endfor %}\n{% if add_generation_prompt %}\nassistant:{% endif %}",
        );
        let out = t.render(&[Message::new("user", "hi")], true).unwrap();
        assert_eq!(out, "<s>\n    user: hi\nassistant:");
    }

    #[test]
    fn python_methods_loop_controls_and_namespace() {
        let t = compile(
            "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}[{{ m.content.strip().upper() }}]{% if m.content.startswith(' b') %}{% break %}{% endif %}{% endfor %}{{ ns.n }}",
        );
        let msgs = [
            Message::new("system", "s"),
            Message::new("user", " a "),
            Message::new("assistant", " b "),
            Message::new("user", "c"),
        ];
        assert_eq!(t.render(&msgs, false).unwrap(), "[A][B]2");
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let t = compile("{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok");
        let err = t.render(&[Message::new("assistant", "x")], false).unwrap_err();
        assert!(err.to_string().contains("Conversation must start with user"), "{err}");
        assert!(!err.to_string().contains('\n'));
        assert_eq!(t.render(&[Message::new("user", "x")], false).unwrap(), "ok");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = compile("{{ messages[0] | tojson }}|{{ {'a': [1, 2.5, none, true]} | tojson(indent=2) }}");
        let out = t.render(&[Message::new("user", "한\"국\n")], false).unwrap();
        assert_eq!(
            out,
            "{\"role\": \"user\", \"content\": \"한\\\"국\\n\"}|{\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ]\n}"
        );
    }

    #[test]
    fn tojson_keeps_insertion_order_and_python_float_spelling() {
        // Python: json.dumps({"z": 1e-07, "a": 1e16, "m": [0.0001, 2.5e-05, -0.0, 123.0, 1.5e+300]})
        let t = compile("{{ messages[0] | tojson }}");
        let msgs =
            serde_json::json!([{"role": "user", "z": 1e-7, "a": 1e16, "m": [0.0001, 2.5e-5, -0.0, 123.0, 1.5e300]}]);
        assert_eq!(
            t.render_json(&msgs, false).unwrap(),
            "{\"role\": \"user\", \"z\": 1e-07, \"a\": 1e+16, \"m\": [0.0001, 2.5e-05, -0.0, 123.0, 1.5e+300]}"
        );
    }

    #[test]
    fn a_template_that_never_ends_stops_with_a_one_line_error_naming_its_file() {
        let t = compile("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x");
        let started = std::time::Instant::now();
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("t.jinja") && err.contains("did not finish"), "{err}");
        assert!(!err.contains('\n'));
        assert!(started.elapsed().as_secs() < 30);
    }

    #[test]
    fn a_template_that_emits_without_end_stops_at_the_size_cap() {
        let t = compile("{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}");
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("t.jinja") && err.contains("exceeds 16 MiB"), "{err}");
    }

    #[test]
    fn generation_tags_render_their_body() {
        let t = compile("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}");
        assert_eq!(t.render(&[Message::new("assistant", "x")], false).unwrap(), "x");
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-23 00:00:00 UTC (a Tuesday), day 205 of a leap year.
        let t = 1_721_692_800;
        assert_eq!(strftime("%d %b %Y", t), "23 Jul 2024");
        assert_eq!(strftime("%A %B %j %H:%M:%S %y %%", t + 3723), "Tuesday July 205 01:02:03 24 %");
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
        let now = strftime_now("%Y".into()).unwrap();
        assert!(now.as_str().unwrap().parse::<i32>().unwrap() >= 2024);
    }

    /// A model directory whose `tokenizer_config.json` is `config`.
    fn model_dir(config: serde_json::Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        dir
    }

    #[test]
    fn named_template_list_renders_default_and_tool_use_with_tools() {
        let dir = model_dir(serde_json::json!({
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS {{ tools | length }}"},
                {"name": "default", "template": "DEFAULT {{ messages | length }}"}
            ]
        }));
        let tok = TokenizerConfig::load(dir.path()).unwrap();
        let mut t = ChatTemplate::for_model(dir.path(), &tok, None).unwrap();
        assert_eq!(t.render(&[Message::new("user", "x")], true).unwrap(), "DEFAULT 1");
        let messages = serde_json::json!([{"role": "user", "content": "x"}]);
        let tools = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
        assert_eq!(t.render_with_tools(&messages, Some(&tools), true).unwrap(), "TOOLS 1");
        assert_eq!(t.render_with_tools(&messages, None, true).unwrap(), "DEFAULT 1");
    }

    #[test]
    fn a_template_of_the_wrong_shape_names_the_file_and_key() {
        let dir = model_dir(serde_json::json!({"chat_template": 7}));
        let tok = TokenizerConfig::load(dir.path()).unwrap();
        let err = ChatTemplate::for_model(dir.path(), &tok, None).err().unwrap().to_string();
        let file = dir.path().join("tokenizer_config.json");
        assert!(err.contains(&format!("{}: `chat_template` is a number", file.display())), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn chat_template_jinja_file_wins_and_missing_template_explains() {
        let dir = model_dir(serde_json::json!({"chat_template": "CONFIG"}));
        let tok = TokenizerConfig::load(dir.path()).unwrap();
        assert_eq!(ChatTemplate::for_model(dir.path(), &tok, None).unwrap().render(&[], true).unwrap(), "CONFIG");
        std::fs::write(dir.path().join("chat_template.jinja"), "FILE").unwrap();
        let t = ChatTemplate::for_model(dir.path(), &tok, None).unwrap();
        assert_eq!(t.render(&[], true).unwrap(), "FILE");
        assert_eq!(t.source(), &TemplateSource::File(dir.path().join("chat_template.jinja")));

        let empty = tempfile::tempdir().unwrap();
        let err = ChatTemplate::for_model(empty.path(), &TokenizerConfig::default(), None).err().unwrap().to_string();
        assert!(err.contains("--chat-template FILE") && err.contains("merge with chatvec"), "{err}");
        assert!(!err.contains('\n'));
    }
}
