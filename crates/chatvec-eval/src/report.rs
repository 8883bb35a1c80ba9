//! One self-contained HTML page (and its JSON) comparing the models of a merge: perplexity,
//! chat behaviour, what the vector changes, and sample answers side by side.
//!
//! Images are embedded as base64 data URIs and the style sheet is inline, so the single file
//! can be mailed or attached to an issue.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use chatvec_format::{Checkpoint, NoProgress};
use serde::Serialize;

use crate::chat_eval::{run_chat_eval, ChatEval, ChatOptions, Prompt, PromptResult};
use crate::endpoint::{perplexity_endpoint, run_chat_eval_endpoint, Endpoint, Scored};
use crate::error::{EvalError, Result};
use crate::inspect::{inspect, InspectInput, InspectReport, VectorInput, WeightsRef};
use crate::perplexity::{perplexity, Perplexity, Window};
use crate::plots::{write_heatmap, Size};
use chatvec_gen::{ChatModel, LoadOptions};

/// One evaluated model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEval {
    /// target, merged, chat or base.
    pub role: String,
    /// Its directory.
    pub path: String,
    /// Perplexity on the text.
    pub perplexity: Option<Perplexity>,
    /// Chat evaluation.
    pub chat: Option<ChatEval>,
}

/// Everything the report shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Page title.
    pub title: String,
    /// chatvec version.
    pub version: String,
    /// The text perplexity was measured on.
    pub text: String,
    /// Models, in column order.
    pub models: Vec<ModelEval>,
    /// The vector's statistics (none without local weights).
    pub inspect: Option<InspectReport>,
    /// Why there is no heatmap, when there is none.
    pub heatmap_note: Option<String>,
    /// The heatmap PNG (embedded in the HTML, not in the JSON).
    #[serde(skip)]
    pub heatmap_png: Option<Vec<u8>>,
    /// Sample answers shown per model.
    pub samples: usize,
    /// Notes for the reader.
    pub notes: Vec<String>,
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { A[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    out
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = r#"
body { font-family: -apple-system, "Segoe UI", "Noto Sans KR", "Malgun Gothic", sans-serif; margin: 24px; color: #1b1b1b; background: #fff; }
h1 { font-size: 24px; margin-bottom: 4px; } h2 { font-size: 19px; margin-top: 28px; border-bottom: 2px solid #1f4e79; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th { background: #1f4e79; color: #fff; padding: 6px 10px; text-align: left; }
td { border: 1px solid #c8d3df; padding: 5px 10px; vertical-align: top; }
tr:nth-child(even) td { background: #f3f6fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.answer { white-space: pre-wrap; max-width: 420px; font-size: 13px; }
.muted { color: #666; font-size: 13px; } img.plot { max-width: 100%; border: 1px solid #c8d3df; }
.best { font-weight: bold; color: #0b6b2b; }
"#;

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |x| format!("{:.1}%", 100.0 * x))
}

fn num(v: Option<f64>, d: usize) -> String {
    v.map_or_else(|| "–".into(), |x| format!("{x:.d$}"))
}

fn sci(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), crate::inspect::sig)
}

/// Renders the page.
pub fn render_html(r: &Report) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"ko\"><head><meta charset=\"utf-8\">");
    h.push_str(&format!("<title>{}</title><style>{STYLE}</style></head><body>\n", escape(&r.title)));
    h.push_str(&format!("<h1>{}</h1>\n", escape(&r.title)));
    h.push_str(&format!(
        "<p class=\"muted\">chatvec {} · perplexity text: {}</p>\n",
        escape(&r.version),
        escape(&r.text)
    ));
    for n in &r.notes {
        h.push_str(&format!("<p class=\"muted\">{}</p>\n", escape(n)));
    }

    h.push_str("<h2>Summary</h2>\n<table id=\"summary\"><tr><th>model</th><th>path</th><th>perplexity</th><th>mean NLL</th><th>stop rate</th><th>Korean ratio</th><th>repetition</th><th>mean tokens</th><th>header leaks</th><th>P(end of turn)</th></tr>\n");
    for m in &r.models {
        let s = m.chat.as_ref().map(|c| &c.summary);
        h.push_str(&format!(
            "<tr><td><b>{}</b></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            escape(&m.role),
            escape(&m.path),
            num(m.perplexity.as_ref().map(|p| p.perplexity), 3),
            num(m.perplexity.as_ref().map(|p| p.mean_nll), 5),
            pct(s.map(|s| s.stop_rate)),
            pct(s.and_then(|s| s.korean_ratio)),
            pct(s.and_then(|s| s.repetition)),
            num(s.map(|s| s.mean_tokens), 1),
            pct(s.map(|s| s.leak_rate)),
            num(s.and_then(|s| s.eot_probability), 4),
        ));
    }
    h.push_str("</table>\n<p class=\"muted\">Stop rate: answers ended by a stop id before the token limit. Korean ratio: Hangul share of letters outside code. Repetition: share of repeated word 3-grams. Header leaks: answers containing chat-template headers. P(end of turn): probability of the end-of-turn token right after a reference answer.</p>\n");
    if let Some(c) = r.models.iter().find_map(|m| m.chat.as_ref()) {
        let o = &c.options;
        h.push_str(&format!(
            "<p class=\"muted\">{} prompts; max_new_tokens {}, temperature {}, top_p {}, top_k {}, seed {}.</p>\n",
            c.summary.prompts, o.max_new_tokens, o.temperature, o.top_p, o.top_k, o.seed
        ));
    }

    if let Some(i) = &r.inspect {
        h.push_str("<h2>What the vector changes</h2>\n");
        h.push_str(&format!("<p class=\"muted\">vector: {}</p>\n", escape(&i.vector)));
        if let Some(png) = &r.heatmap_png {
            h.push_str(&format!(
                "<img class=\"plot\" id=\"heatmap\" alt=\"heatmap of the vector per layer and module\" src=\"data:image/png;base64,{}\">\n",
                base64(png)
            ));
        }
        h.push_str("<table id=\"kinds\"><tr><th>module kind</th><th>tensors</th><th>‖Δ‖</th><th>‖W‖</th><th>‖Δ‖/‖W‖</th><th>max |Δ|</th><th>zero Δ</th></tr>\n");
        for g in &i.kinds {
            let s = &g.stats;
            h.push_str(&format!(
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
                escape(&g.label), g.tensors, sci(Some(s.delta_norm)), sci(s.weight_norm), sci(s.relative_norm),
                sci(Some(s.max_abs_delta)), pct(Some(s.zero_share))
            ));
        }
        h.push_str("</table>\n<table id=\"layers\"><tr><th>layer</th><th>tensors</th><th>‖Δ‖</th><th>‖Δ‖/‖W‖</th><th>max |Δ|</th></tr>\n");
        for g in &i.layers {
            let s = &g.stats;
            h.push_str(&format!(
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
                escape(&g.label), g.tensors, sci(Some(s.delta_norm)), sci(s.relative_norm), sci(Some(s.max_abs_delta))
            ));
        }
        h.push_str("</table>\n");
    } else if let Some(note) = &r.heatmap_note {
        h.push_str("<h2>What the vector changes</h2>\n");
        h.push_str(&format!("<p class=\"muted\" id=\"no-heatmap\">{}</p>\n", escape(note)));
    }

    let with_chat: Vec<&ModelEval> = r.models.iter().filter(|m| m.chat.is_some()).collect();
    if let Some(first) = with_chat.first().and_then(|m| m.chat.as_ref()) {
        h.push_str("<h2>Sample answers</h2>\n<table id=\"samples\"><tr><th>prompt</th>");
        for m in &with_chat {
            h.push_str(&format!("<th>{}</th>", escape(&m.role)));
        }
        h.push_str("</tr>\n");
        for (i, p) in first.results.iter().enumerate().take(r.samples) {
            h.push_str(&format!(
                "<tr><td class=\"answer\"><b>{}</b> ({})<br>{}</td>",
                escape(&p.id),
                escape(&p.category),
                escape(&p.prompt)
            ));
            for m in &with_chat {
                let a = m.chat.as_ref().and_then(|c| c.results.get(i));
                h.push_str(&match a {
                    Some(a) => format!(
                        "<td class=\"answer\">{}<br><span class=\"muted\">{} tokens, {}, Korean {}</span></td>",
                        escape(&a.answer),
                        a.tokens,
                        if a.stopped { "stopped" } else { "hit the limit" },
                        pct(a.korean_ratio)
                    ),
                    None => "<td></td>".into(),
                });
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// Where a model of the report is evaluated.
pub enum ModelSource<'a> {
    /// A model directory (or a hub snapshot), loaded here.
    Local(PathBuf),
    /// A model served under `name` by an OpenAI-compatible server.
    Served {
        /// The server.
        endpoint: &'a Endpoint,
        /// The served model's name.
        name: String,
    },
    /// Not judged: only its weights are here, for the heatmap.
    WeightsOnly,
}

/// One model of the report.
pub struct ReportModel<'a> {
    /// target, merged, chat or base.
    pub role: &'static str,
    /// Where it is evaluated.
    pub source: ModelSource<'a>,
    /// Its weights on this machine, for the heatmap: a local model's directory, or for a served
    /// one a local copy when the user has it.
    pub weights: Option<PathBuf>,
}

impl<'a> ReportModel<'a> {
    /// A model loaded here from `dir` (its weights drawn in the heatmap).
    pub fn local(role: &'static str, dir: PathBuf) -> Self {
        ReportModel { role, weights: Some(dir.clone()), source: ModelSource::Local(dir) }
    }

    /// A model served under `name` by `endpoint`, with a local copy of its weights if given.
    pub fn served(role: &'static str, endpoint: &'a Endpoint, name: &str, weights: Option<PathBuf>) -> Self {
        ReportModel { role, weights, source: ModelSource::Served { endpoint, name: name.to_string() } }
    }
}

/// What `report` evaluates and how.
pub struct ReportJob<'a> {
    /// The models in column order: target, merged, then chat and base when given.
    pub models: Vec<ReportModel<'a>>,
    /// Text for perplexity and its name.
    pub text: (&'a str, String),
    /// Window and token limit for perplexity.
    pub window: Window,
    /// Score at most this many tokens.
    pub max_tokens: Option<usize>,
    /// Prompts (empty: no chat evaluation).
    pub prompts: &'a [Prompt],
    /// Generation settings (for served models, `batch_size` is the number of requests in flight).
    pub chat_options: ChatOptions,
    /// Loading of local models.
    pub load: LoadOptions,
    /// Answers shown side by side.
    pub samples: usize,
}

impl ReportJob<'_> {
    /// The local weights of `role`, if any.
    fn weights(&self, role: &str) -> Option<&Path> {
        self.models.iter().find(|m| m.role == role).and_then(|m| m.weights.as_deref())
    }
}

/// The vector the heatmap shows: CHAT − BASE when both weights are here, else what the merge
/// added, MERGED − TARGET; with a note saying which, or why there is none.
fn vector_input(job: &ReportJob) -> Result<(Option<VectorInput>, Option<String>)> {
    let pair = |plus: &Path, minus: &Path| -> Result<VectorInput> {
        Ok(VectorInput { plus: Checkpoint::open(plus)?, minus: Some(Checkpoint::open(minus)?) })
    };
    if let (Some(c), Some(b)) = (job.weights("chat"), job.weights("base")) {
        return Ok((Some(pair(c, b)?), None));
    }
    if let (Some(m), Some(t)) = (job.weights("merged"), job.weights("target")) {
        let note = "The heatmap shows MERGED − TARGET (ratio × chat vector) relative to the target's weights; \
                    give --chat and --base to see CHAT − BASE.";
        return Ok((Some(pair(m, t)?), Some(note.to_string())));
    }
    let note = "No heatmap: it needs the weights, and an endpoint serves answers, not weights. Give local copies \
                with --weights chat=DIR --weights base=DIR (or merged= and target=) to draw it.";
    Ok((None, Some(note.to_string())))
}

/// The perplexity and chat evaluation of one model, and notes on what could not be measured;
/// none for a model that is not judged.
fn evaluate(
    job: &ReportJob,
    model: &ReportModel,
    cancel: &AtomicBool,
    log: &mut dyn FnMut(&str),
    on_result: &mut dyn FnMut(usize, usize, &PromptResult),
) -> Result<Option<(ModelEval, Vec<String>)>> {
    let n = job.prompts.len();
    let role = model.role;
    let mut notes = Vec::new();
    let (path, perplexity, chat) = match &model.source {
        ModelSource::Local(dir) => {
            log(&format!("evaluating {role}: {}", dir.display()));
            // Models without a chat template borrow the merge's (which carries the chat model's).
            let fallback = job.models.iter().find_map(|m| match (&m.source, m.role) {
                (ModelSource::Local(d), "merged") => Some(d.as_path()),
                _ => None,
            });
            let mut m = ChatModel::load(dir, &job.load, fallback)?;
            let mut ids = m.encode_text(job.text.0)?;
            if let Some(n) = job.max_tokens {
                ids.truncate(n);
            }
            let ppl = perplexity(&mut m.model, &ids, job.window, cancel)?;
            log(&format!("  perplexity {:.4}", ppl.perplexity));
            let chat = match n {
                0 => None,
                _ => {
                    Some(run_chat_eval(&mut m, job.prompts, &job.chat_options, cancel, &mut |i, r| on_result(i, n, r))?)
                }
            };
            (dir.display().to_string(), Some(ppl), chat)
        }
        ModelSource::Served { endpoint, name } => {
            log(&format!("evaluating {role}: {name} at {}", endpoint.base()));
            let width = job.chat_options.batch_size;
            let scored = perplexity_endpoint(endpoint, name, job.text.0, job.max_tokens, job.window, width, cancel)?;
            let ppl = match scored {
                Scored::Perplexity(p) => {
                    log(&format!("  perplexity {:.4}", p.perplexity));
                    Some(p)
                }
                Scored::Unavailable(why) => {
                    log(&format!("  perplexity: not available from this endpoint: {why}"));
                    notes.push(format!("{role}: perplexity: not available from this endpoint ({why})."));
                    None
                }
            };
            let chat = match n {
                0 => None,
                _ => Some(run_chat_eval_endpoint(
                    endpoint,
                    name,
                    job.prompts,
                    &job.chat_options,
                    cancel,
                    &mut |i, r| on_result(i, n, r),
                )?),
            };
            (format!("{name} at {}", endpoint.base()), ppl, chat)
        }
        ModelSource::WeightsOnly => return Ok(None),
    };
    Ok(Some((ModelEval { role: role.into(), path, perplexity, chat }, notes)))
}

/// Evaluates the models, writes `report.html`, `report.json` and `heatmap.png/svg` (when there
/// are weights to draw it from) into `out`, and returns the report. `log` gets progress lines,
/// `on_result` each answered prompt.
pub fn build_report(
    job: &ReportJob,
    out: &Path,
    cancel: &AtomicBool,
    log: &mut dyn FnMut(&str),
    on_result: &mut dyn FnMut(usize, usize, &PromptResult),
) -> Result<Report> {
    std::fs::create_dir_all(out).map_err(|e| EvalError::io(out, "create", e))?;
    let (vector, vector_note) = vector_input(job)?;
    let (mut inspected, mut png) = (None, None);
    if let Some(vector) = vector {
        log("inspecting the vector");
        let report = inspect(&InspectInput { vector, weights: WeightsRef::Minus, compare: None }, &NoProgress, cancel)?;
        let heatmap_path = out.join("heatmap");
        write_heatmap(&report.heatmap(false), &heatmap_path, Size::DEFAULT)?;
        let png_path = heatmap_path.with_extension("png");
        png = Some(std::fs::read(&png_path).map_err(|e| EvalError::io(&png_path, "read back", e))?);
        inspected = Some(report);
    }
    let mut models = Vec::new();
    // Without a heatmap its note goes in the heatmap's section, not at the top as well.
    let mut notes: Vec<String> = vector_note.iter().filter(|_| inspected.is_some()).cloned().collect();
    for model in &job.models {
        if let Some((eval, model_notes)) = evaluate(job, model, cancel, log, on_result)? {
            models.push(eval);
            notes.extend(model_notes);
        }
    }
    let served = job.models.iter().any(|m| matches!(m.source, ModelSource::Served { .. }));
    if served && !job.prompts.is_empty() {
        notes.push(
            "P(end of turn) is not measured through an endpoint: it needs the model's logits right after a \
             templated reference answer, and a server applies its template to whole conversations only."
                .into(),
        );
    }
    let report = Report {
        title: "chatvec report".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        text: job.text.1.clone(),
        models,
        heatmap_note: inspected.is_none().then(|| vector_note.clone()).flatten(),
        inspect: inspected,
        heatmap_png: png,
        samples: job.samples,
        notes,
    };
    let json = out.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?).map_err(|e| EvalError::io(&json, "write", e))?;
    let html = out.join("report.html");
    std::fs::write(&html, render_html(&report)).map_err(|e| EvalError::io(&html, "write", e))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn escape_html() {
        assert_eq!(escape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }
}
