//! Whether a model fits in memory at the chosen weight format, checked before loading so that a
//! model too big for the machine is refused in one line instead of being killed by the kernel.

use candle_core::quantized::GgmlDType;
use candle_core::DType;

use crate::device::WeightFormat;
use crate::error::{GenError, Result};
use crate::models::{head_format, table_format, DecoderConfig};

/// KV-cache positions the estimate allows for.
const CONTEXT_ALLOWANCE: usize = 2048;
/// Activations, logits, the tokenizer, the allocator's slack.
const OVERHEAD_BYTES: f64 = 400e6;

/// Bytes a loaded model takes: linear weights in `format`, the embeddings and the output
/// projection as the decoder holds them (one table when tied and compact), a KV cache of 2048
/// positions, and a fixed overhead.
pub fn model_bytes(cfg: &DecoderConfig, format: WeightFormat, dtype: DType, stored_bytes: f64) -> f64 {
    let (h, hd) = (cfg.hidden_size as f64, cfg.head_dim as f64);
    let (q, kv) = (cfg.num_heads as f64 * hd, cfg.num_kv_heads as f64 * hd);
    let per_layer = h * (q + 2.0 * kv) + q * h + 3.0 * h * cfg.intermediate_size as f64;
    let linear = per_layer * cfg.num_layers as f64;
    let embed = cfg.vocab_size as f64 * h;
    let weights = match format {
        WeightFormat::Dense => {
            let head = if cfg.tie_word_embeddings { 0.0 } else { embed };
            (linear + embed + head) * dtype.size_in_bytes() as f64
        }
        WeightFormat::Ggml(d) => {
            // The table and the projection as the decoder holds them (one table when tied).
            let bytes = |f: GgmlDType| f.type_size() as f64 / f.block_size() as f64;
            let table = table_format(Some(d), cfg.hidden_size, cfg.tie_word_embeddings);
            let head = match table {
                Some(_) if cfg.tie_word_embeddings => 0.0,
                _ => bytes(head_format(d)),
            };
            let table = table.map_or(stored_bytes, bytes);
            linear * format.bytes_per_weight(dtype) + embed * (table + head)
        }
    };
    weights + kv_cache_bytes(cfg, dtype) + OVERHEAD_BYTES
}

/// Memory this process may still use: the system's available memory (sysinfo: `MemAvailable`
/// on Linux), lowered by the cgroup's room when a limit is set; `None` when unknown.
pub fn available_bytes() -> Option<f64> {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let available = sys.available_memory() as f64;
    if available == 0.0 {
        return None;
    }
    let room = sys.cgroup_limits().and_then(|c| cgroup_room(c.total_memory, sys.total_memory(), c.rss));
    Some(room.map_or(available, |r| r.min(available)))
}

/// The room a cgroup leaves: its limit less its processes' resident memory, or None when it sets
/// no limit below the machine's memory. Not sysinfo's `free_memory`, which subtracts the group's
/// page cache too (reclaimable), and on cgroup v1 hosts with no limit reads the root group,
/// whose cache is the whole machine's: a 1B model was refused on a 24 GB machine with 18 GB of
/// it cache.
fn cgroup_room(limit: u64, machine: u64, rss: u64) -> Option<f64> {
    (limit < machine).then(|| limit.saturating_sub(rss) as f64)
}

/// Refuses, in one line naming the formats that would fit, a model that needs more than
/// `available` bytes at `format`.
pub fn check_fits(
    cfg: &DecoderConfig,
    format: WeightFormat,
    dtype: DType,
    stored_bytes: f64,
    available: f64,
) -> Result<()> {
    let need = model_bytes(cfg, format, dtype, stored_bytes);
    if need <= available {
        return Ok(());
    }
    let fitting: Vec<String> = [GgmlDType::BF16, GgmlDType::Q8_0, GgmlDType::Q4K]
        .into_iter()
        .map(WeightFormat::Ggml)
        .filter(|&f| f != format)
        .map(|f| (f, model_bytes(cfg, f, dtype, stored_bytes)))
        .filter(|&(_, bytes)| bytes <= available)
        .map(|(f, bytes)| format!("{} ({})", f.describe(dtype), gb(bytes)))
        .collect();
    let advice = if fitting.is_empty() {
        "no supported format fits; free memory or use a machine with more".to_string()
    } else {
        format!("use --quantize {}", fitting.join(" or "))
    };
    Err(GenError::InvalidArgument(format!(
        "the model needs {} at {}, {} available: {advice} (--no-memory-check skips this check)",
        gb(need),
        format.describe(dtype),
        gb(available)
    )))
}

/// Refuses a GGUF of `file_bytes` (its weights, loaded as stored) that would not fit.
pub fn check_file_fits(
    path: &std::path::Path,
    file_bytes: f64,
    cfg: &DecoderConfig,
    dtype: DType,
    available: f64,
) -> Result<()> {
    let need = file_bytes + kv_cache_bytes(cfg, dtype) + OVERHEAD_BYTES;
    if need <= available {
        return Ok(());
    }
    Err(GenError::InvalidArgument(format!(
        "{}: the model needs {}, {} available: use a smaller quantization of it (--no-memory-check skips this check)",
        path.display(),
        gb(need),
        gb(available)
    )))
}

fn kv_cache_bytes(cfg: &DecoderConfig, dtype: DType) -> f64 {
    let kv = (cfg.num_kv_heads * cfg.head_dim) as f64;
    cfg.num_layers as f64 * 2.0 * kv * CONTEXT_ALLOWANCE as f64 * dtype.size_in_bytes() as f64
}

fn gb(bytes: f64) -> String {
    format!("{:.1} GB", bytes / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::config_from_json;

    /// Llama-3-8B's config.json (the fields the decoder reads).
    fn llama3_8b() -> DecoderConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192,
            "rope_theta": 500000.0, "torch_dtype": "bfloat16"
        });
        config_from_json(&json, std::path::Path::new("config.json")).unwrap().1
    }

    #[test]
    fn an_8b_model_takes_what_llama_cpp_files_take() {
        // llama.cpp's Llama-3-8B GGUFs: bf16 16.1 GB, q8_0 8.5 GB; plus 0.9 GB of f32 KV cache
        // and overhead.
        let cfg = llama3_8b();
        let gb = |f: &str| model_bytes(&cfg, WeightFormat::parse(f).unwrap(), DType::F32, 2.0) / 1e9;
        assert!((16.5..17.5).contains(&gb("bf16")), "{}", gb("bf16"));
        assert!((9.0..10.0).contains(&gb("q8_0")), "{}", gb("q8_0"));
        assert!((5.5..6.5).contains(&gb("q4_k")), "{}", gb("q4_k"));
        assert!((33.0..34.5).contains(&gb("none")), "{}", gb("none"));
    }

    #[test]
    fn a_tied_table_is_counted_once_where_one_table_serves_both_ends() {
        let untied = llama3_8b();
        let tied = DecoderConfig { tie_word_embeddings: true, ..untied.clone() };
        let embed = (untied.vocab_size * untied.hidden_size) as f64;
        let saved = |f: &str| {
            let f = WeightFormat::parse(f).unwrap();
            model_bytes(&untied, f, DType::F32, 2.0) - model_bytes(&tied, f, DType::F32, 2.0)
        };
        // bf16: the stored table (2 bytes a weight) is not held beside the projection's.
        assert!((saved("bf16") - 2.0 * embed).abs() < 1.0, "{}", saved("bf16"));
        // q8_0: the projection is the q8_0 table; q4_k: the q8_0 table, not a q6_k copy.
        assert!((saved("q8_0") - 34.0 / 32.0 * embed).abs() < 1.0, "{}", saved("q8_0"));
        assert!((saved("q4_k") - 210.0 / 256.0 * embed).abs() < 1.0, "{}", saved("q4_k"));
    }

    #[test]
    fn a_cgroup_without_a_limit_leaves_the_machine_s_memory() {
        assert_eq!(cgroup_room(24 << 30, 24 << 30, 1 << 30), None);
        assert_eq!(cgroup_room(8 << 30, 24 << 30, 3 << 30), Some((5u64 << 30) as f64));
        assert_eq!(cgroup_room(8 << 30, 24 << 30, 9 << 30), Some(0.0));
    }

    #[test]
    fn a_model_too_big_is_refused_naming_the_formats_that_fit() {
        let cfg = llama3_8b();
        let bf16 = WeightFormat::parse("bf16").unwrap();
        let err = check_fits(&cfg, bf16, DType::F32, 2.0, 12e9).unwrap_err().to_string();
        assert!(err.contains("at bf16, 12.0 GB available"), "{err}");
        assert!(err.contains("--quantize q8_0 (") && err.contains(" GB) or q4_k (5."), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = check_fits(&cfg, bf16, DType::F32, 2.0, 1e9).unwrap_err().to_string();
        assert!(err.contains("no supported format fits"), "{err}");
        check_fits(&cfg, WeightFormat::parse("q8_0").unwrap(), DType::F32, 2.0, 12e9).unwrap();
    }
}
