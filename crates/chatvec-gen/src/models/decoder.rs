//! The decoder-only transformer shared by Llama, Mistral, Qwen2 and Gemma.
//!
//! Written on candle-core/candle-nn ops instead of reusing candle-transformers' per-model files
//! because those (0.11) derive `head_dim` from `hidden_size / heads`, return logits for the last
//! position only (perplexity needs all of them), do not read transformers-5 `rope_parameters`,
//! and copy K/V for grouped-query attention on every step. One implementation parameterised by
//! [`DecoderConfig`] keeps the four architectures in step.

use candle_core::quantized::GgmlDType;
use candle_core::{CpuStorage, DType, Device, Storage, Tensor, D};

use super::config::{Activation, DecoderConfig};
use super::kernels::attention;
use super::linear::{convert, fitting_format, stack_quantized, Linear, LinearWeight};
use super::rope::Rope;
use super::weights::WeightSource;
use crate::error::Result;

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}

#[derive(Debug)]
struct Attention {
    /// q, k and v projections stacked into one matrix: one pass over the input per layer.
    qkv: Linear,
    o: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    sliding_window: Option<usize>,
}

#[derive(Debug, Clone)]
struct Mlp {
    /// gate and up projections stacked into one matrix.
    gate_up: Linear,
    down: Linear,
    intermediate: usize,
    activation: Activation,
}

#[derive(Debug)]
struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_attention_norm: RmsNorm,
    mlp: Mlp,
}

/// Token embeddings: in the compute dtype when weights are dense, else as stored (bf16, or a
/// ggml format from a GGUF); rows are widened on lookup. Held as a [`LinearWeight`], so tied
/// embeddings are the output projection itself.
#[derive(Debug, Clone)]
struct Embeddings(LinearWeight);

impl Embeddings {
    /// The rows of `ids` (1-D), `(ids, hidden)` in `dtype`.
    fn lookup(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let rows = match &self.0 {
            LinearWeight::Dense(t) => t.index_select(ids, 0)?,
            LinearWeight::Compact(q) => q.embedding(ids)?,
            LinearWeight::Q8_0(w) => {
                let ((vocab, hidden), ids) = (w.shape(), ids.to_vec1::<u32>()?);
                let mut out = vec![0f32; ids.len() * hidden];
                for (&id, out) in ids.iter().zip(out.chunks_exact_mut(hidden)) {
                    if id as usize >= vocab {
                        return Err(crate::GenError::InvalidArgument(format!(
                            "token id {id} is outside the vocabulary of {vocab}"
                        )));
                    }
                    w.dequantize_row(id as usize, out);
                }
                Tensor::from_vec(out, (ids.len(), hidden), &Device::Cpu)?
            }
        };
        Ok(rows.to_dtype(dtype)?)
    }

    fn is_dense(&self) -> bool {
        matches!(self.0, LinearWeight::Dense(_))
    }
}

/// A loaded decoder: the weights only. Each sequence's keys and values live in its own
/// [`KvCache`], so one decoder serves many sequences at once ([`Decoder::forward`]).
#[derive(Debug)]
pub struct Decoder {
    cfg: DecoderConfig,
    embed: Embeddings,
    embed_scale: Option<f64>,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    format: Option<GgmlDType>,
    rope: Rope,
    dtype: DType,
    device: Device,
}

struct Loader<'a> {
    src: &'a dyn WeightSource,
    dtype: DType,
    device: &'a Device,
    /// The format of linear weights (None: dense in `dtype`).
    format: Option<GgmlDType>,
}

impl Loader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.src.tensor(name, shape)?;
        Ok(t.to_device(self.device)?.to_dtype(self.dtype)?)
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        self.stacked(&[(prefix, out)], inp, bias)
    }

    /// Several projections of the same input concatenated along the output dimension, in their
    /// stored dtype, then converted once.
    fn stacked(&self, parts: &[(&str, usize)], inp: usize, bias: bool) -> Result<Linear> {
        let mut bs = Vec::with_capacity(parts.len());
        if bias {
            for (prefix, out) in parts {
                bs.push(self.get(&format!("{prefix}.bias"), &[*out])?);
            }
        }
        let bias = if bias { Some(Tensor::cat(&bs, 0)?) } else { None };
        let mut quantized = Vec::with_capacity(parts.len());
        for (prefix, out) in parts {
            quantized.extend(self.src.qtensor(&format!("{prefix}.weight"), &[*out, inp])?);
        }
        if quantized.len() == parts.len() {
            return Ok(Linear { weight: stack_quantized(quantized, self.device)?, bias });
        }
        let weight = match self.format.and_then(|f| fitting_format(f, inp)) {
            Some(f) => {
                let names: Vec<String> = parts.iter().map(|(prefix, _)| format!("{prefix}.weight")).collect();
                let parts: Vec<(&str, usize)> =
                    names.iter().map(String::as_str).zip(parts.iter().map(|p| p.1)).collect();
                convert(self.src, &parts, inp, f, self.device)?
            }
            None => {
                let mut ws = Vec::with_capacity(parts.len());
                for (prefix, out) in parts {
                    ws.push(self.src.tensor(&format!("{prefix}.weight"), &[*out, inp])?);
                }
                let w = if ws.len() == 1 { ws.pop().expect("one part") } else { Tensor::cat(&ws, 0)? };
                LinearWeight::Dense(w.to_device(self.device)?.to_dtype(self.dtype)?)
            }
        };
        Ok(Linear { weight, bias })
    }

    /// The token embeddings: kept as stored when they come quantized (a GGUF), else converted to
    /// [`table_format`], else dense (in the compute dtype when the other weights are dense).
    fn embeddings(&self, vocab: usize, hidden: usize, tied: bool) -> Result<Embeddings> {
        let name = "model.embed_tokens.weight";
        if let Some(q) = self.src.qtensor(name, &[vocab, hidden])? {
            return Ok(Embeddings(stack_quantized(vec![q], self.device)?));
        }
        if let Some(f) = table_format(self.format, hidden, tied) {
            return Ok(Embeddings(convert(self.src, &[(name, vocab)], hidden, f, self.device)?));
        }
        let t = self.src.tensor(name, &[vocab, hidden])?.to_device(self.device)?;
        Ok(Embeddings(LinearWeight::Dense(if self.format.is_some() { t } else { t.to_dtype(self.dtype)? })))
    }

    /// The output projection (`tied`: the embedding matrix). Quantized formats use q6_k (q4
    /// formats) or q8_0 for it, as llama.cpp does for `output.weight`; a GGUF's is used as stored.
    fn lm_head(&self, embed: &Embeddings, tied: bool, cfg: &DecoderConfig) -> Result<Linear> {
        let shape = [cfg.vocab_size, cfg.hidden_size];
        let name = match (tied, embed.is_dense()) {
            (true, false) => return Ok(Linear { weight: embed.0.clone(), bias: None }),
            (true, true) => "model.embed_tokens.weight",
            (false, _) => "lm_head.weight",
        };
        if let Some(q) = self.src.qtensor(name, &shape)? {
            return Ok(Linear { weight: stack_quantized(vec![q], self.device)?, bias: None });
        }
        let weight = match (self.format.map(head_format).and_then(|f| fitting_format(f, cfg.hidden_size)), &embed.0) {
            (Some(f), _) => convert(self.src, &[(name, shape[0])], shape[1], f, self.device)?,
            (None, LinearWeight::Dense(t)) if tied => LinearWeight::Dense(t.to_dtype(self.dtype)?),
            (None, _) => {
                LinearWeight::Dense(self.src.tensor(name, &shape)?.to_device(self.device)?.to_dtype(self.dtype)?)
            }
        };
        Ok(Linear { weight, bias: None })
    }

    fn norm(&self, name: &str, cfg: &DecoderConfig) -> Result<RmsNorm> {
        // Gemma's (1 + w) is folded in once, computed in float32 as transformers does.
        let w = self.src.tensor(name, &[cfg.hidden_size])?.to_device(self.device)?;
        let w = if cfg.norm_weight_offset != 0.0 { (w.to_dtype(DType::F32)? + cfg.norm_weight_offset)? } else { w };
        Ok(RmsNorm { weight: w.to_dtype(self.dtype)?, eps: cfg.rms_norm_eps as f32 })
    }
}

/// The format the token table is converted to when the linear weights are converted to
/// `format`, or None for the table as stored (dense): q8_0 below 16 bits when rows are whole
/// blocks (as llama.cpp's q8_0 files store `token_embd`: at 8B, 0.5 GB less than bf16), and the
/// format itself at bf16 or f16 when the table is also the output projection (`tied`), so one
/// table serves both (held twice before: 0.5 GB more for Llama-3's 128k rows). A table in a
/// format is, when tied, the output projection too (see `lm_head`).
pub(crate) fn table_format(format: Option<GgmlDType>, hidden: usize, tied: bool) -> Option<GgmlDType> {
    match format? {
        GgmlDType::BF16 | GgmlDType::F16 if tied => format,
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => None,
        _ => hidden.is_multiple_of(GgmlDType::Q8_0.block_size()).then_some(GgmlDType::Q8_0),
    }
}

/// The format of an output projection of its own for linear weights in `format`: q6_k for the
/// q4/q5 formats, q8_0 for the other quantized ones (as llama.cpp does for `output.weight`),
/// the format itself at 16 bits and more.
pub(crate) fn head_format(format: GgmlDType) -> GgmlDType {
    match format {
        GgmlDType::Q4K | GgmlDType::Q4_0 | GgmlDType::Q5K => GgmlDType::Q6K,
        GgmlDType::BF16 | GgmlDType::F16 | GgmlDType::F32 => format,
        _ => GgmlDType::Q8_0,
    }
}

impl Decoder {
    /// Builds the decoder from named tensors (`model.layers.N.self_attn.q_proj.weight`, ...),
    /// computing in `dtype`, with linear weights dense (`format` None) or in a ggml format.
    pub fn load(
        cfg: &DecoderConfig,
        src: &dyn WeightSource,
        device: &Device,
        dtype: DType,
        format: Option<GgmlDType>,
    ) -> Result<Self> {
        let ld = Loader { src, dtype, device, format };
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        // A checkpoint without lm_head.weight is tied in practice even if its config forgot to say so.
        let tied = cfg.tie_word_embeddings || !src.contains("lm_head.weight");
        let embed = ld.embeddings(cfg.vocab_size, h, tied)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let attn = Attention {
                qkv: ld.stacked(
                    &[
                        (&format!("{p}.self_attn.q_proj"), q_out),
                        (&format!("{p}.self_attn.k_proj"), kv_out),
                        (&format!("{p}.self_attn.v_proj"), kv_out),
                    ],
                    h,
                    cfg.qkv_bias,
                )?,
                o: ld.linear(&format!("{p}.self_attn.o_proj"), h, q_out, cfg.o_bias)?,
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: hd,
                sliding_window: cfg.sliding_window,
            };
            let mlp = Mlp {
                gate_up: ld.stacked(
                    &[
                        (&format!("{p}.mlp.gate_proj"), cfg.intermediate_size),
                        (&format!("{p}.mlp.up_proj"), cfg.intermediate_size),
                    ],
                    h,
                    cfg.mlp_bias,
                )?,
                down: ld.linear(&format!("{p}.mlp.down_proj"), h, cfg.intermediate_size, cfg.mlp_bias)?,
                intermediate: cfg.intermediate_size,
                activation: cfg.activation,
            };
            layers.push(Layer {
                input_norm: ld.norm(&format!("{p}.input_layernorm.weight"), cfg)?,
                attn,
                post_attention_norm: ld.norm(&format!("{p}.post_attention_layernorm.weight"), cfg)?,
                mlp,
            });
        }
        let norm = ld.norm("model.norm.weight", cfg)?;
        let lm_head = ld.lm_head(&embed, tied, cfg)?;
        let embed_scale = if cfg.scale_embeddings {
            // transformers rounds the normaliser to the compute dtype before multiplying.
            let s =
                Tensor::new((h as f32).sqrt(), device)?.to_dtype(dtype)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            Some(s as f64)
        } else {
            None
        };
        Ok(Decoder {
            rope: Rope::new(&cfg.rope, hd),
            cfg: cfg.clone(),
            embed,
            embed_scale,
            layers,
            norm,
            lm_head,
            format,
            dtype,
            device: device.clone(),
        })
    }

    /// The configuration this decoder was built from.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The ggml format of the linear weights (None: dense in the compute dtype).
    pub fn weight_format(&self) -> Option<GgmlDType> {
        self.format
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs every sequence's `tokens` after its cached positions in one pass: the linear layers
    /// see the rows of all sequences together, attention runs per sequence over its own cache.
    /// Returns, per input, float32 logits `(rows, vocab)` for the rows its [`Logits`] asks for.
    pub fn forward(&self, inputs: &mut [SeqInput<'_>]) -> Result<Vec<Option<Tensor>>> {
        if inputs.iter().any(|i| i.tokens.is_empty()) {
            return Err(crate::GenError::InvalidArgument("forward needs at least one token".into()));
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.hidden(inputs)?;
        let mut picks = Vec::new();
        let mut wanted = Vec::with_capacity(inputs.len());
        let mut offset = 0;
        for input in inputs.iter() {
            let s = input.tokens.len();
            let rows = match input.logits {
                Logits::None => 0..0,
                Logits::Last => s - 1..s,
                Logits::All => 0..s,
                Logits::From(first) => first.min(s)..s,
            };
            wanted.push(rows.len());
            picks.extend(rows.map(|r| (offset + r) as u32));
            offset += s;
        }
        let logits = match picks.len() {
            0 => None,
            n if n == offset => Some(self.lm_head.forward(&h)?.to_dtype(DType::F32)?),
            _ => {
                let rows = h.index_select(&Tensor::new(picks.as_slice(), &self.device)?, 0)?;
                Some(self.lm_head.forward(&rows)?.to_dtype(DType::F32)?)
            }
        };
        let mut out = Vec::with_capacity(inputs.len());
        let mut start = 0;
        for n in wanted {
            out.push(match (&logits, n) {
                (Some(l), n) if n > 0 => Some(l.narrow(0, start, n)?),
                _ => None,
            });
            start += n;
        }
        Ok(out)
    }

    /// Runs the inputs' tokens and returns the final hidden states `(rows, hidden)`, the rows of
    /// all inputs in order; every cache grows by its input's tokens.
    fn hidden(&self, inputs: &mut [SeqInput<'_>]) -> Result<Tensor> {
        let ids: Vec<u32> = inputs.iter().flat_map(|i| i.tokens.iter().copied()).collect();
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let mut x = self.embed.lookup(&ids, self.dtype)?;
        if let Some(scale) = self.embed_scale {
            x = (x * scale)?;
        }
        let mut seqs = Vec::with_capacity(inputs.len());
        for input in inputs.iter_mut() {
            let (start, s) = (input.cache.len, input.tokens.len());
            let (cos, sin) = self.rope.tables(start, s, self.dtype, &self.device)?;
            input.cache.layers.resize_with(self.layers.len(), LayerKv::default);
            seqs.push(SeqRows { start, len: s, cos, sin, kv: &mut input.cache.layers });
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(&x)?;
            let h = layer.attn.forward(&h, l, &mut seqs)?;
            let x1 = (&x + h)?;
            let h = layer.post_attention_norm.forward(&x1)?;
            let h = layer.mlp.forward(&h)?;
            x = (x1 + h)?;
        }
        drop(seqs);
        for input in inputs.iter_mut() {
            input.cache.len += input.tokens.len();
        }
        self.norm.forward(&x)
    }
}

/// Which logits a sequence wants from a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (a prompt chunk that is not the last).
    None,
    /// The last row's (the next token's distribution).
    Last,
    /// Every row's (perplexity, prompt log-probabilities).
    All,
    /// The rows from this one on (a perplexity window's scored tokens).
    From(usize),
}

/// One sequence's part of a [`Decoder::forward`]: its new tokens and its cache.
#[derive(Debug)]
pub struct SeqInput<'a> {
    /// Tokens that follow the cached positions.
    pub tokens: &'a [u32],
    /// The sequence's keys and values; grows by `tokens`.
    pub cache: &'a mut KvCache,
    /// Which logits to return.
    pub logits: Logits,
}

/// One sequence inside a layer's attention: where its rows start in its cache, its rotary
/// tables, and its per-layer keys and values.
struct SeqRows<'a> {
    start: usize,
    len: usize,
    cos: Tensor,
    sin: Tensor,
    kv: &'a mut Vec<LayerKv>,
}

/// One sequence's keys and values at every layer, and how many positions they hold.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
}

impl KvCache {
    /// An empty cache (its buffers are allocated on the first forward).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `len` positions (for reusing a shared prompt prefix); 0 frees the buffers.
    pub fn truncate(&mut self, len: usize) {
        if len == 0 {
            *self = KvCache::default();
        } else if len < self.len {
            self.layers.iter_mut().for_each(|l| l.len = len);
            self.len = len;
        }
    }
}

impl Attention {
    /// Attention for the rows `x (rows, hidden)` of all sequences at layer `layer`: one qkv and
    /// one output projection over every row, the attention itself per sequence.
    fn forward(&self, x: &Tensor, layer: usize, seqs: &mut [SeqRows<'_>]) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        let mut ys = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for seq in seqs.iter_mut() {
            let rows = qkv.narrow(0, offset, seq.len)?;
            ys.push(self.attend(&rows, seq.start, &seq.cos, &seq.sin, &mut seq.kv[layer])?);
            offset += seq.len;
        }
        let y = if ys.len() == 1 { ys.pop().expect("one sequence") } else { Tensor::cat(&ys, 0)? };
        self.o.forward(&y)
    }

    /// One sequence's attention: `qkv (s, ...)` are its projected rows at positions
    /// `start..start + s`; returns `(s, heads * head_dim)`.
    fn attend(&self, qkv: &Tensor, start: usize, cos: &Tensor, sin: &Tensor, kv: &mut LayerKv) -> Result<Tensor> {
        let s = qkv.dim(0)?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let split = |offset: usize, heads: usize| -> Result<Tensor> {
            Ok(qkv.narrow(1, offset * hd, heads * hd)?.reshape((1, s, heads, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = candle_nn::rotary_emb::rope(&split(0, nh)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&split(nh, nkv)?, cos, sin)?;
        let v = split(nh + nkv, nkv)?;
        let (k, v) = kv.append(&k, &v)?;
        let total = start + s;

        // With one query and a window shorter than the cache, attending to the window's keys
        // alone is the same as masking the rest, and cheaper.
        let (k, v, first_key) = match self.sliding_window {
            Some(w) if s == 1 && total > w => (k.narrow(2, total - w, w)?, v.narrow(2, total - w, w)?, total - w),
            _ => (k, v, 0),
        };
        let t = total - first_key;
        let scale = 1.0 / (hd as f64).sqrt();
        if s == 1 {
            if let Some(y) = kv.attend_one(&q, first_key..total, scale as f32)? {
                return Ok(y);
            }
        }

        // Grouped-query attention without copying K/V: the n_rep query heads that share a KV
        // head are laid out as extra query rows of that head.
        let rep = nh / nkv;
        let q = q.reshape((1, nkv, rep * s, hd))?;
        let att = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
        let att = if s > 1 || first_key > 0 {
            let mask = self.mask(rep, s, start, first_key, t, qkv.device())?;
            att.broadcast_add(&mask)?
        } else {
            att
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(v.dtype())?;
        Ok(att.matmul(&v.contiguous()?)?.reshape((1, nh, s, hd))?.transpose(1, 2)?.reshape((s, nh * hd))?)
    }

    /// Additive mask `(rep * s, t)`: row `r` is the query at position `start + r % s`, column `j`
    /// the key at position `first_key + j`.
    fn mask(&self, rep: usize, s: usize, start: usize, first_key: usize, t: usize, device: &Device) -> Result<Tensor> {
        let mut m = vec![0f32; rep * s * t];
        for r in 0..rep * s {
            let q = start + r % s;
            for j in 0..t {
                let k = first_key + j;
                let visible = k <= q && self.sliding_window.is_none_or(|w| q - k < w);
                if !visible {
                    m[r * t + j] = f32::NEG_INFINITY;
                }
            }
        }
        Ok(Tensor::from_vec(m, (rep * s, t), device)?)
    }
}

/// One layer's keys and values `(1, kv heads, positions, head_dim)` of the cached positions, in
/// buffers with room to spare: a decode step writes one position instead of copying the whole
/// cache (what `Tensor::cat` did, a cost that grew with the context).
#[derive(Debug, Default)]
struct LayerKv {
    buffers: Option<(Tensor, Tensor)>,
    len: usize,
}

impl LayerKv {
    /// Appends `k`, `v` (`s` new positions) and returns views of every cached position.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let need = self.len + k.dim(2)?;
        let capacity = self.buffers.as_ref().map_or(Ok(0), |(k, _)| k.dim(2))?;
        if need > capacity {
            self.grow(k, need.max(2 * capacity).max(64))?;
        }
        let (kb, vb) = self.buffers.as_ref().expect("allocated above");
        kb.slice_set(&k.contiguous()?, 2, self.len)?;
        vb.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = need;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
    }

    /// One query position's attention `(1, heads * head_dim)` over the cached positions `keys`,
    /// read in place by the CPU kernel (`kernels::attention`); None where the cache is not f32 on
    /// the CPU (candle's ops then).
    fn attend_one(&self, q: &Tensor, keys: std::ops::Range<usize>, scale: f32) -> Result<Option<Tensor>> {
        let Some((kb, vb)) = &self.buffers else { return Ok(None) };
        let (ks, kl) = kb.storage_and_layout();
        let (vs, vl) = vb.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(k)), Storage::Cpu(CpuStorage::F32(v))) = (&*ks, &*vs) else {
            return Ok(None);
        };
        let (_, kv_heads, capacity, head_dim) = kb.dims4()?;
        let len = kv_heads * capacity * head_dim;
        let (k, v) = (&k[kl.start_offset()..][..len], &v[vl.start_offset()..][..len]);
        let q = q.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; q.len()];
        let rows = attention::KvRows { k, v, capacity, head_dim };
        attention::attend_one(&q, rows, keys, scale, &mut out);
        Ok(Some(Tensor::from_vec(out, (1, q.len()), kb.device())?))
    }

    /// New buffers of `capacity` positions holding the cached ones.
    fn grow(&mut self, like: &Tensor, capacity: usize) -> Result<()> {
        let (b, h, _, d) = like.dims4()?;
        let fresh = || Tensor::zeros((b, h, capacity, d), like.dtype(), like.device());
        let (k, v) = (fresh()?, fresh()?);
        if let Some((ok, ov)) = &self.buffers {
            k.slice_set(&ok.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            v.slice_set(&ov.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
        }
        self.buffers = Some((k, v));
        Ok(())
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gu = self.gate_up.forward(x)?;
        let gate = gu.narrow(D::Minus1, 0, self.intermediate)?;
        let up = gu.narrow(D::Minus1, self.intermediate, self.intermediate)?;
        let gate = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
            Activation::Gelu => gate.gelu_erf()?,
        };
        self.down.forward(&(gate * up)?)
    }
}
