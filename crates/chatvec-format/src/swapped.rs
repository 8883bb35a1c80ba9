//! A guard against the easiest mistake with a chat vector: `--base` and `--chat` given the wrong
//! way round, which merges silently and subtracts the chat skills instead of adding them.
//!
//! A chat model is the base plus instruction tuning, and tuning leaves two marks in the model
//! directory: a chat template, and an end-of-turn token among the stop ids (Llama-3-Instruct
//! stops on `<|eot_id|>` as well as `<|end_of_text|>`). When the "base" has a mark the "chat"
//! lacks, the two were most likely swapped.

use std::path::Path;

use crate::config::ModelConfig;
use crate::modelfiles::{chat_template, eos_ids};

/// A warning when the model given as `base` looks like the chat model of the pair and `chat`
/// like its base: only the base has a chat template, or the base's stop ids strictly include the
/// chat model's. `None` when nothing points that way (or a file cannot be read: the merge
/// itself reports that).
pub fn swapped_pair_warning(base: &Path, chat: &Path) -> Option<String> {
    let has_template = |dir: &Path| chat_template(dir).ok().flatten().is_some();
    if has_template(base) && !has_template(chat) {
        return Some(format!(
            "--base {} has a chat template and --chat {} has none: are --base and --chat swapped?",
            base.display(),
            chat.display()
        ));
    }
    let stops = |dir: &Path| ModelConfig::load(dir).ok().and_then(|c| eos_ids(dir, &c).ok());
    let (base_stops, chat_stops) = (stops(base)?, stops(chat)?);
    let base_stops_more = chat_stops.iter().all(|id| base_stops.contains(id)) && base_stops.len() > chat_stops.len();
    base_stops_more.then(|| {
        format!(
            "--base {} stops on ids {base_stops:?} and --chat {} only on {chat_stops:?}: are --base and --chat swapped?",
            base.display(),
            chat.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model directory with `config.json` (eos 1), and optionally a chat template and a
    /// `generation_config.json` with the given stop ids.
    fn model(dir: &Path, name: &str, template: bool, stops: &[u32]) -> std::path::PathBuf {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), r#"{"model_type": "llama", "eos_token_id": 1}"#).unwrap();
        if template {
            std::fs::write(d.join("tokenizer_config.json"), r#"{"chat_template": "{{ messages }}"}"#).unwrap();
        }
        std::fs::write(d.join("generation_config.json"), format!(r#"{{"eos_token_id": {stops:?}}}"#)).unwrap();
        d
    }

    #[test]
    fn a_template_only_in_the_base_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, chat) = (model(tmp.path(), "b", true, &[1]), model(tmp.path(), "c", false, &[1]));
        let w = swapped_pair_warning(&base, &chat).unwrap();
        assert!(w.contains("has a chat template") && w.contains("swapped"), "{w}");
        assert_eq!(swapped_pair_warning(&chat, &base), None);
    }

    #[test]
    fn an_end_of_turn_stop_only_in_the_base_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, chat) = (model(tmp.path(), "b", true, &[1, 9]), model(tmp.path(), "c", true, &[1]));
        let w = swapped_pair_warning(&base, &chat).unwrap();
        assert!(w.contains("[1, 9]") && w.contains("only on [1]"), "{w}");
        assert_eq!(swapped_pair_warning(&chat, &base), None);
    }

    #[test]
    fn a_pair_the_right_way_round_or_alike_is_not_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let (base, chat) = (model(tmp.path(), "b", false, &[1]), model(tmp.path(), "c", true, &[1, 9]));
        assert_eq!(swapped_pair_warning(&base, &chat), None);
        // Same marks on both sides, or different stop ids neither of which includes the other.
        let (x, y) = (model(tmp.path(), "x", true, &[1, 2]), model(tmp.path(), "y", true, &[1, 3]));
        assert_eq!(swapped_pair_warning(&x, &y), None);
        assert_eq!(swapped_pair_warning(&x, &x), None);
        // Unreadable directories give no warning (the merge reports them).
        assert_eq!(swapped_pair_warning(Path::new("/no/such/base"), Path::new("/no/such/chat")), None);
    }
}
