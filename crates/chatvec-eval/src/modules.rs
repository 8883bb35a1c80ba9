//! Tensor names → (layer, module kind), for the naming schemes of Llama, Mistral, Qwen2, Gemma,
//! GPT-NeoX, GPT-2 and Falcon style checkpoints, so statistics can be grouped the same way
//! whatever the family.

use serde::Serialize;

/// What part of the network a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    /// Input token (or position) embedding.
    Embed,
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Fused query/key/value projection (GPT-NeoX, GPT-2, Falcon, Phi-3).
    Qkv,
    /// Attention output projection.
    O,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// Fused gate/up projection (Phi-3).
    GateUp,
    /// MLP down projection.
    Down,
    /// Any normalisation weight (per layer or final).
    Norm,
    /// Output projection to the vocabulary.
    LmHead,
    /// Anything else (rotary buffers, routers, ...).
    Other,
}

impl ModuleKind {
    /// Every kind, in the column order of tables and heatmaps.
    pub const ALL: [ModuleKind; 13] = [
        ModuleKind::Embed,
        ModuleKind::Q,
        ModuleKind::K,
        ModuleKind::V,
        ModuleKind::Qkv,
        ModuleKind::O,
        ModuleKind::Gate,
        ModuleKind::Up,
        ModuleKind::GateUp,
        ModuleKind::Down,
        ModuleKind::Norm,
        ModuleKind::LmHead,
        ModuleKind::Other,
    ];

    /// Short label for tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            ModuleKind::Embed => "embed",
            ModuleKind::Q => "q",
            ModuleKind::K => "k",
            ModuleKind::V => "v",
            ModuleKind::Qkv => "qkv",
            ModuleKind::O => "o",
            ModuleKind::Gate => "gate",
            ModuleKind::Up => "up",
            ModuleKind::GateUp => "gate_up",
            ModuleKind::Down => "down",
            ModuleKind::Norm => "norm",
            ModuleKind::LmHead => "lm_head",
            ModuleKind::Other => "other",
        }
    }
}

impl std::fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A tensor name's place in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModulePlace {
    /// Decoder layer index; `None` for embeddings, the final norm and the head.
    pub layer: Option<usize>,
    /// Module kind.
    pub kind: ModuleKind,
}

/// Where `name` sits: the first all-digit path segment is the layer (`model.layers.7.…`,
/// `transformer.h.7.…`, `gpt_neox.layers.7.…`), the segment before `weight`/`bias` the module.
pub fn classify(name: &str) -> ModulePlace {
    let parts: Vec<&str> = name.split('.').collect();
    let layer_pos = parts.iter().position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let layer = layer_pos.and_then(|i| parts[i].parse().ok());
    let mut tail: Vec<&str> = parts[layer_pos.map_or(0, |i| i + 1)..].to_vec();
    if matches!(tail.last(), Some(&"weight" | &"bias" | &"scale")) {
        tail.pop();
    }
    let leaf = tail.last().copied().unwrap_or("");
    let parent = if tail.len() >= 2 { tail[tail.len() - 2] } else { "" };
    let in_attn = tail.iter().any(|p| p.contains("attn") || p.contains("attention"));
    let kind = if leaf.contains("norm") || leaf.starts_with("ln_") || leaf == "ln_f" {
        ModuleKind::Norm
    } else {
        match leaf {
            "q_proj" | "query" | "wq" | "q" => ModuleKind::Q,
            "k_proj" | "key" | "wk" | "k" => ModuleKind::K,
            "v_proj" | "value" | "wv" | "v" => ModuleKind::V,
            "query_key_value" | "qkv_proj" | "c_attn" | "Wqkv" | "qkv" => ModuleKind::Qkv,
            "o_proj" | "out_proj" | "wo" | "dense" | "c_proj" if in_attn => ModuleKind::O,
            "gate_proj" | "w1" => ModuleKind::Gate,
            "up_proj" | "w3" | "dense_h_to_4h" | "c_fc" | "fc1" => ModuleKind::Up,
            "gate_up_proj" => ModuleKind::GateUp,
            "down_proj" | "w2" | "dense_4h_to_h" | "c_proj" | "fc2" => ModuleKind::Down,
            "embed_tokens" | "wte" | "wpe" | "embed_in" | "word_embeddings" | "tok_embeddings" => ModuleKind::Embed,
            "lm_head" | "embed_out" => ModuleKind::LmHead,
            "output" if layer.is_none() && parent.is_empty() => ModuleKind::LmHead,
            _ => ModuleKind::Other,
        }
    };
    ModulePlace { layer, kind }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str) -> (Option<usize>, ModuleKind) {
        let p = classify(name);
        (p.layer, p.kind)
    }

    #[test]
    fn llama_mistral_qwen2_gemma_names() {
        use ModuleKind::*;
        assert_eq!(c("model.embed_tokens.weight"), (None, Embed));
        assert_eq!(c("model.layers.0.self_attn.q_proj.weight"), (Some(0), Q));
        assert_eq!(c("model.layers.11.self_attn.k_proj.bias"), (Some(11), K));
        assert_eq!(c("model.layers.2.self_attn.v_proj.weight"), (Some(2), V));
        assert_eq!(c("model.layers.2.self_attn.o_proj.weight"), (Some(2), O));
        assert_eq!(c("model.layers.3.mlp.gate_proj.weight"), (Some(3), Gate));
        assert_eq!(c("model.layers.3.mlp.up_proj.weight"), (Some(3), Up));
        assert_eq!(c("model.layers.3.mlp.down_proj.weight"), (Some(3), Down));
        assert_eq!(c("model.layers.3.input_layernorm.weight"), (Some(3), Norm));
        assert_eq!(c("model.layers.3.post_attention_layernorm.weight"), (Some(3), Norm));
        assert_eq!(c("model.layers.3.pre_feedforward_layernorm.weight"), (Some(3), Norm));
        assert_eq!(c("model.layers.3.self_attn.q_norm.weight"), (Some(3), Norm));
        assert_eq!(c("model.norm.weight"), (None, Norm));
        assert_eq!(c("lm_head.weight"), (None, LmHead));
        assert_eq!(c("model.language_model.layers.5.mlp.down_proj.weight"), (Some(5), Down));
    }

    #[test]
    fn gpt_neox_gpt2_falcon_names() {
        use ModuleKind::*;
        assert_eq!(c("gpt_neox.embed_in.weight"), (None, Embed));
        assert_eq!(c("gpt_neox.layers.4.attention.query_key_value.weight"), (Some(4), Qkv));
        assert_eq!(c("gpt_neox.layers.4.attention.dense.weight"), (Some(4), O));
        assert_eq!(c("gpt_neox.layers.4.mlp.dense_h_to_4h.weight"), (Some(4), Up));
        assert_eq!(c("gpt_neox.layers.4.mlp.dense_4h_to_h.bias"), (Some(4), Down));
        assert_eq!(c("gpt_neox.final_layer_norm.weight"), (None, Norm));
        assert_eq!(c("embed_out.weight"), (None, LmHead));
        assert_eq!(c("transformer.h.1.attn.c_attn.weight"), (Some(1), Qkv));
        assert_eq!(c("transformer.h.1.attn.c_proj.weight"), (Some(1), O));
        assert_eq!(c("transformer.h.1.mlp.c_proj.weight"), (Some(1), Down));
        assert_eq!(c("transformer.h.1.ln_1.weight"), (Some(1), Norm));
        assert_eq!(c("transformer.ln_f.weight"), (None, Norm));
        assert_eq!(c("transformer.word_embeddings.weight"), (None, Embed));
        assert_eq!(c("transformer.h.0.self_attention.dense.weight"), (Some(0), O));
        assert_eq!(c("model.layers.0.self_attn.rotary_emb.inv_freq"), (Some(0), Other));
    }
}
