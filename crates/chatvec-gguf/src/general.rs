//! The `general.*` keys the converter derives without a model card: sampling defaults from
//! `generation_config.json`, and name, basename, finetune, version and size label from the model
//! directory's name and the parameter count (gguf-py's `Metadata` heuristics).

use regex::Regex;
use serde_json::Value as Json;

use crate::format::{Metadata, Value};

/// Writes `general.sampling.*` from a `generation_config.json` value, in gguf-py's order.
pub fn write_sampling(gen: Option<&Json>, meta: &mut Metadata) {
    let Some(g) = gen else { return };
    let f = |k: &str| g.get(k).and_then(Json::as_f64).map(|v| Value::F32(v as f32));
    let i = |k: &str| g.get(k).and_then(Json::as_i64).map(|v| Value::I32(v as i32));
    let keys: [(&str, Option<Value>); 12] = [
        ("sequence", g.get("sequence").and_then(Json::as_str).map(Value::str)),
        ("top_k", i("top_k")),
        ("top_p", f("top_p")),
        ("min_p", f("min_p")),
        ("xtc_probability", f("xtc_probability")),
        ("xtc_threshold", f("xtc_threshold")),
        ("temp", f("temperature")),
        ("penalty_last_n", i("penalty_last_n")),
        ("penalty_repeat", f("penalty_repeat").or_else(|| f("repetition_penalty"))),
        ("mirostat", i("mirostat")),
        ("mirostat_tau", f("mirostat_tau")),
        ("mirostat_eta", f("mirostat_eta")),
    ];
    for (k, v) in keys {
        if let Some(v) = v {
            meta.set(&format!("general.sampling.{k}"), v);
        }
    }
}

/// Writes name, version, finetune, basename and size label for a model called `dir_name` with
/// `total_params` parameters.
pub fn write_names(dir_name: &str, total_params: u64, meta: &mut Metadata) {
    let ids = IdComponents::of(dir_name, total_params);
    meta.set("general.name", Value::str(&id_to_title(&ids.full_name)));
    let size = ids.size_label.clone().unwrap_or_else(|| size_label(total_params));
    for (k, v) in [("version", &ids.version), ("finetune", &ids.finetune), ("basename", &ids.basename)] {
        if let Some(v) = v {
            meta.set(&format!("general.{k}"), Value::str(v));
        }
    }
    meta.set("general.size_label", Value::str(&size));
}

/// `Metadata.id_to_title`: title-case lower-case words that are not versions or numbers.
fn id_to_title(s: &str) -> String {
    let keep = Regex::new(r"^(v\d+(?:\.\d+)*|\d.*)$").expect("valid regex");
    s.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| if is_lower(w) && !keep.is_match(w) { title(w) } else { w.to_string() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's `str.islower`: has a cased character and no upper-case one.
fn is_lower(w: &str) -> bool {
    w.chars().any(char::is_lowercase) && !w.chars().any(char::is_uppercase)
}

/// Python's `str.title`: upper-case the first letter of every run of letters.
fn title(w: &str) -> String {
    let mut out = String::new();
    let mut prev_letter = false;
    for c in w.chars() {
        if c.is_alphabetic() {
            if prev_letter {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            prev_letter = true;
        } else {
            out.push(c);
            prev_letter = false;
        }
    }
    out
}

/// gguf-py's `size_label` for a dense model.
pub fn size_label(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    // Python: max(2 - len(str(round(scaled)).lstrip('0')), 0) decimals.
    let digits = format!("{}", scaled.round_ties_even() as u64).trim_start_matches('0').len();
    format!("{scaled:.prec$}{suffix}", prec = 2usize.saturating_sub(digits))
}

#[derive(Default)]
struct IdComponents {
    full_name: String,
    basename: Option<String>,
    finetune: Option<String>,
    version: Option<String>,
    size_label: Option<String>,
}

impl IdComponents {
    /// `Metadata.get_model_id_components` for a directory name (no organisation part).
    fn of(id: &str, total_params: u64) -> Self {
        let mut c = IdComponents { full_name: id.to_string(), ..Default::default() };
        if id.contains(' ') {
            return c;
        }
        let re = |s: &str| Regex::new(s).expect("valid regex");
        let (version, quant) = (re(r"(?i)^(v|iter)?\d+([.]\d+)*$"), re(r"(?i)^(i?q\d(_\w)*|b?fp?(16|32))$"));
        let (size, tune) = (
            re(r"(?i)^(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)$"),
            re(r"(?i)^(chat|instruct|vision|lora)$"),
        );
        let mut parts: Vec<String> = id.split('-').filter(|p| !p.is_empty()).map(str::to_string).collect();
        let mut types: Vec<Vec<&str>> = vec![vec![]; parts.len()];
        for i in 0..parts.len() {
            let part = parts[i].clone();
            if version.is_match(&part) {
                types[i].push("version");
            } else if quant.is_match(&part) {
                types[i].push("type");
                parts[i] = part.to_uppercase();
            } else if i > 0 && size.is_match(&part) {
                let (label, ctx) = normalise_size(&part, total_params);
                types[i].push(if ctx { "finetune" } else { "size_label" });
                parts[i] = label;
            } else if i > 0 && tune.is_match(&part) {
                types[i].push("finetune");
            }
        }
        let has_numeric_size =
            parts.iter().zip(&types).any(|(p, t)| t.contains(&"size_label") && p.chars().any(|c| c.is_ascii_digit()));
        if has_numeric_size {
            for (p, t) in parts.iter().zip(types.iter_mut()) {
                if t.contains(&"size_label") && p.chars().all(char::is_alphabetic) {
                    t.retain(|x| *x != "size_label");
                }
            }
        }
        let mut at_start = true;
        for (p, t) in parts.iter().zip(types.iter_mut()) {
            let alpha_start = p.chars().next().is_some_and(char::is_alphabetic);
            if at_start && ((t.is_empty() && alpha_start) || t.contains(&"version")) {
                t.push("basename");
            } else {
                at_start = false;
                if t.is_empty() {
                    t.push("finetune");
                }
            }
        }
        for t in types.iter_mut().rev() {
            if t.contains(&"basename") && t.len() > 1 {
                t.retain(|x| *x != "basename");
            } else {
                break;
            }
        }
        let join = |f: &dyn Fn(&Vec<&str>) -> bool| {
            let mut seen: Vec<&str> = vec![];
            for (p, t) in parts.iter().zip(&types) {
                if f(t) && !seen.contains(&p.as_str()) {
                    seen.push(p);
                }
            }
            (!seen.is_empty()).then(|| seen.join("-"))
        };
        c.basename = join(&|t| t.contains(&"basename"));
        c.size_label = join(&|t| t.contains(&"size_label"));
        c.finetune = join(&|t| t.contains(&"finetune"));
        c.version = join(&|t| t.contains(&"version") && !t.contains(&"basename"));
        if c.size_label.is_none() && c.finetune.is_none() && c.version.is_none() {
            c.basename = None;
        }
        c
    }
}

/// A size part of a name normalised (`7b` → `7B`, `7b1` → `7.1B`); `true` when it is far from the
/// parameter count and so probably a context length (then lower-cased and treated as finetune).
fn normalise_size(part: &str, total_params: u64) -> (String, bool) {
    let mut p = part.replace('_', ".");
    let chars: Vec<char> = p.chars().collect();
    if chars.last().is_some_and(char::is_ascii_digit) && chars.len() >= 2 {
        let n = chars.len();
        p = format!("{}.{}{}", chars[..n - 2].iter().collect::<String>(), chars[n - 1], chars[n - 2]);
    }
    let chars: Vec<char> = p.chars().collect();
    if chars.len() > 1 && chars[chars.len() - 2].is_ascii_digit() && "kmbt".contains(chars[chars.len() - 1]) {
        p = format!("{}{}", &p[..p.len() - 1], chars[chars.len() - 1].to_ascii_uppercase());
    }
    if total_params == 0 {
        return (p, false);
    }
    let (num, unit) = p.split_at(p.len() - 1);
    let Ok(num) = num.parse::<f64>() else { return (p, false) };
    let Some(power) = " KMBT".find(unit) else { return (p, false) };
    let label = num * 1000f64.powi(power as i32);
    let t = total_params as f64;
    if (label - t).abs() > (7 * total_params / 8) as f64 {
        (format!("{num_part}{}", unit.to_lowercase(), num_part = &p[..p.len() - 1]), true)
    } else {
        (p, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(id: &str, params: u64) -> Vec<(String, Value)> {
        let mut m = Metadata::default();
        write_names(id, params, &mut m);
        m.entries().to_vec()
    }

    #[test]
    fn directory_names_become_gguf_names_as_gguf_py_derives_them() {
        assert_eq!(size_label(396_480), "396K");
        assert_eq!(size_label(1_235_814_400), "1.2B");
        assert_eq!(size_label(8_030_261_248), "8.0B");
        let n = names("chat", 396_480);
        assert_eq!(n[0], ("general.name".into(), Value::str("Chat")));
        let n = names("Llama-3.2-1B-Instruct", 1_235_814_400);
        let get = |k: &str| n.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
        assert_eq!(get("general.name"), Some(Value::str("Llama 3.2 1B Instruct")));
        assert_eq!(get("general.basename"), Some(Value::str("Llama-3.2")));
        assert_eq!(get("general.finetune"), Some(Value::str("Instruct")));
        assert_eq!(get("general.size_label"), Some(Value::str("1B")));
    }
}
