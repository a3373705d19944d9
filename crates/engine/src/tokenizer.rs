//! Text to token ids and back, built from the vocabulary a GGUF file carries.
//!
//! llama.cpp is the reference: a prompt must become exactly the ids llama.cpp would
//! feed the model, or the model sees text it was not trained on. Two vocabulary kinds
//! are supported, as `tokenizer.ggml.model` names them:
//!
//! - `gpt2`: byte-level BPE with a merge list (SmolLM2, Llama 3, Qwen2). The text is
//!   first split by the regexes llama.cpp picks from `tokenizer.ggml.pre`.
//! - `llama`: SentencePiece (Llama 2, Mistral 7B). Spaces become `▁`, a space is put in
//!   front of the text, pieces merge by score, and characters outside the vocabulary
//!   fall back to `<0xNN>` byte tokens.
//!
//! Regex splitting and BPE merging are done by a [`tokenizers::Tokenizer`] built here
//! (see [`Tokenizer::inner`]). Around it this module does what llama.cpp does and a
//! `tokenizer.json` cannot say: the `parse_special` switch for control tokens written
//! in the text, BOS by the model's metadata, the end-of-generation set, and
//! byte-exact detokenization that streams without splitting UTF-8.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, Model, Normalizer, NormalizerWrapper, OffsetReferential,
    OffsetType, PreTokenizedString, PreTokenizer, PreTokenizerWrapper, SplitDelimiterBehavior,
};

/// GGUF metadata keys this module reads (the names llama.cpp's `llama-arch.cpp` uses).
mod key {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const SCORES: &str = "tokenizer.ggml.scores";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
    pub const FIM_PRE_ID: &str = "tokenizer.ggml.fim_pre_token_id";
    pub const FIM_SUF_ID: &str = "tokenizer.ggml.fim_suf_token_id";
    pub const FIM_MID_ID: &str = "tokenizer.ggml.fim_mid_token_id";
    pub const FIM_PAD_ID: &str = "tokenizer.ggml.fim_pad_token_id";
    pub const FIM_REP_ID: &str = "tokenizer.ggml.fim_rep_token_id";
    pub const FIM_SEP_ID: &str = "tokenizer.ggml.fim_sep_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
}

/// SentencePiece's visible space, which stands for ' ' inside pieces.
const SPM_SPACE: &str = "\u{2581}";

/// The two vocabulary kinds, as `tokenizer.ggml.model` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VocabKind {
    /// `gpt2`: byte-level BPE; pieces spell bytes with GPT-2's printable alphabet.
    ByteLevelBpe,
    /// `llama`: SentencePiece; pieces are UTF-8 text with `▁` for space.
    SentencePiece,
}

/// A token's role, from `tokenizer.ggml.token_type` (the numbers are llama.cpp's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
    Undefined,
}

impl TokenType {
    fn from_gguf(value: i64) -> Self {
        match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }

    /// Dropped by `decode(.., skip_special = true)` and matched in text only with
    /// `parse_special` (llama.cpp's CONTROL | UNKNOWN attributes).
    fn is_special(self) -> bool {
        matches!(self, Self::Control | Self::Unknown)
    }

    /// Split out of the text before BPE runs: special tokens, plus user-defined ones,
    /// which llama.cpp (like Hugging Face's added tokens) matches even without `parse_special`.
    fn is_partitioned(self) -> bool {
        self.is_special() || self == Self::UserDefined
    }
}

/// How llama.cpp pre-splits text for a family of `tokenizer.ggml.pre` values.
struct PreSplit {
    /// Applied in order; each one splits the pieces the previous left (matches and the
    /// text between matches both become pieces).
    regexes: &'static [&'static str],
    /// Take a whole piece as one token when it is in the vocabulary, before merging.
    ignore_merges: bool,
    /// Whether BOS is added when the metadata does not say.
    add_bos: bool,
}

/// GPT-2's split, as llama.cpp writes it.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's split; llama.cpp spells the case-insensitive contractions out.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's Tekken split (Mistral Nemo), from its tokenizer.json.
const TEKKEN_REGEX: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's table from `tokenizer.ggml.pre` to pre-split rules (`llama-vocab.cpp`),
/// for the families verre runs. An unknown name falls back to GPT-2's split.
fn pre_split_for(pre: Option<&str>) -> PreSplit {
    let plain = |regexes| PreSplit {
        regexes,
        ignore_merges: false,
        add_bos: false,
    };
    match pre {
        // llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT.
        None | Some("default") => plain(&[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_REGEX,
            r"\p{N}+",
            "[0-9][0-9][0-9]",
        ]),
        Some(
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
            | "lfm2",
        ) => PreSplit {
            regexes: &[LLAMA3_REGEX],
            ignore_merges: true,
            add_bos: true,
        },
        Some("dbrx" | "smaug-bpe" | "chatglm-bpe") => plain(&[LLAMA3_REGEX]),
        Some("glm4") => PreSplit {
            regexes: &[LLAMA3_REGEX],
            ignore_merges: true,
            add_bos: false,
        },
        Some(
            "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" | "hunyuan" | "kormo"
            | "solar-open",
        ) => plain(&[QWEN2_REGEX]),
        Some("tekken") => PreSplit {
            regexes: &[TEKKEN_REGEX],
            ignore_merges: true,
            add_bos: true,
        },
        // SmolLM and friends: every digit is its own piece, then GPT-2's split. No space
        // is put in front of the text (candle's converter gets this wrong).
        Some(
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b"
            | "mellum2",
        ) => plain(&[r"\p{N}", GPT2_REGEX]),
        Some(
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "jina-es" | "jina-de"
            | "jina-v2-es" | "jina-v2-de" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe"
            | "gigachat" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "trillion"
            | "granite-docling",
        ) => plain(&[GPT2_REGEX]),
        Some(other) => {
            tracing::warn!(
                pre = other,
                "unknown {} value; splitting text like GPT-2, tokenization may differ from the model's",
                key::PRE
            );
            plain(&[GPT2_REGEX])
        }
    }
}

/// Token texts that llama.cpp treats as ending generation whatever their type
/// (`llama_vocab::impl::load`, "maintain a list of tokens that cause end-of-generation").
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

/// Roles llama.cpp finds by token text when the metadata gives no id. A token found
/// this way is made a control token; fim_pad, fim_rep and fim_sep also end generation.
struct RoleByText {
    key: &'static str,
    texts: &'static [&'static str],
    ends_generation: bool,
}

const ROLES_BY_TEXT: &[RoleByText] = &[
    RoleByText {
        key: key::EOT_ID,
        texts: &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|end_of_text|>",
            "<EOT>",
            "_<EOT>",
            "[EOT]",
            "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
            "<end_of_utterance>",
        ],
        ends_generation: true,
    },
    RoleByText {
        key: key::EOM_ID,
        texts: &["<|eom_id|>"],
        ends_generation: true,
    },
    RoleByText {
        key: key::FIM_PRE_ID,
        texts: &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
            "<PRE>",
            "\u{2581}<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
        ends_generation: false,
    },
    RoleByText {
        key: key::FIM_SUF_ID,
        texts: &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
            "<SUF>",
            "\u{2581}<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
        ends_generation: false,
    },
    RoleByText {
        key: key::FIM_MID_ID,
        texts: &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
            "<MID>",
            "\u{2581}<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
        ends_generation: false,
    },
    RoleByText {
        key: key::FIM_PAD_ID,
        texts: &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
        ends_generation: true,
    },
    RoleByText {
        key: key::FIM_REP_ID,
        texts: &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
        ends_generation: true,
    },
    RoleByText {
        key: key::FIM_SEP_ID,
        texts: &["<|file_sep|>"],
        ends_generation: true,
    },
];

/// A model's tokenizer: encodes prompts exactly as llama.cpp does and decodes ids to
/// the bytes the model meant.
#[derive(Clone)]
pub struct Tokenizer {
    /// Normalizer, pre-tokenizer and BPE model, plus control and user-defined tokens
    /// as added tokens (so it also works on its own, e.g. for llguidance).
    inner: tokenizers::Tokenizer,
    kind: VocabKind,
    /// Vocabulary pieces as stored in the GGUF, by id.
    pieces: Vec<String>,
    types: Vec<TokenType>,
    /// What each token decodes to (see [`Tokenizer::token_bytes`]), by id.
    bytes: Vec<Vec<u8>>,
    piece_to_id: HashMap<String, u32>,
    /// Tokens split out of the text before BPE, longest text first (llama.cpp's order).
    partition_tokens: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eog: Vec<u32>,
    /// The model wants BOS in front of a prompt.
    add_bos: bool,
    /// SentencePiece: a space is put in front of every stretch of text that starts the
    /// prompt or follows a special token; decoding takes it off again.
    add_space_prefix: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.pieces.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .field("add_space_prefix", &self.add_space_prefix)
            .finish_non_exhaustive()
    }
}

/// A stretch of the input: plain text for BPE, or a token matched literally.
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

impl Tokenizer {
    /// Build from GGUF metadata (the `metadata` map of `gguf_file::Content`).
    ///
    /// Errors name the missing or malformed key, e.g. "GGUF has no tokenizer: key
    /// tokenizer.ggml.tokens missing".
    pub fn from_gguf_metadata(md: &HashMap<String, Value>) -> Result<Self> {
        let md = Metadata(md);
        let kind = match md.string(key::MODEL)? {
            Some("gpt2") => VocabKind::ByteLevelBpe,
            Some("llama") => VocabKind::SentencePiece,
            Some(other) => bail!(
                "unsupported tokenizer model {other:?} ({}); verre reads \"gpt2\" (byte-level BPE) \
                 and \"llama\" (SentencePiece) vocabularies",
                key::MODEL
            ),
            None => bail!("GGUF has no tokenizer: key {} missing", key::MODEL),
        };

        let pieces = read_pieces(&md)?;
        let n = pieces.len();
        let mut types = match md.array(key::TOKEN_TYPE)? {
            Some(values) => {
                if values.len() < n {
                    bail!(
                        "{} has {} entries for {n} tokens",
                        key::TOKEN_TYPE,
                        values.len()
                    );
                }
                values[..n]
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        integer(v)
                            .map(TokenType::from_gguf)
                            .with_context(|| format!("{}[{i}]", key::TOKEN_TYPE))
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            None => vec![TokenType::Normal; n],
        };

        // Only byte-level BPE pre-splits text; SentencePiece sees each stretch whole.
        let pre_split = match kind {
            VocabKind::ByteLevelBpe => Some(pre_split_for(md.string(key::PRE)?)),
            VocabKind::SentencePiece => None,
        };

        // Default special ids are llama.cpp's for SentencePiece. For gpt2 llama.cpp falls
        // back to id 11 (GPT-2's ","), which is no use to anyone: verre says "none".
        let (default_bos, default_eos, default_unk) = match kind {
            VocabKind::SentencePiece => (Some(1), Some(2), Some(0)),
            VocabKind::ByteLevelBpe => (None, None, None),
        };
        let bos = md
            .token_id(key::BOS_ID, n)?
            .or(default_bos.filter(|&id| id < n as u32));
        let eos = md
            .token_id(key::EOS_ID, n)?
            .or(default_eos.filter(|&id| id < n as u32));
        let unk = md
            .token_id(key::UNK_ID, n)?
            .or(default_unk.filter(|&id| id < n as u32));

        // Without the key, llama.cpp's default: yes for SentencePiece, by pre-tokenizer for gpt2.
        let add_bos = match md.bool(key::ADD_BOS)? {
            Some(value) => value,
            None => pre_split.as_ref().is_none_or(|p| p.add_bos),
        };
        let add_space_prefix =
            kind == VocabKind::SentencePiece && md.bool(key::ADD_SPACE_PREFIX)?.unwrap_or(true);

        let piece_to_id: HashMap<String, u32> = pieces
            .iter()
            .enumerate()
            .map(|(id, p)| (p.clone(), id as u32))
            .collect();

        let eog = find_end_of_generation(&md, &pieces, &piece_to_id, &mut types, eos)?;

        let mut partition_tokens: Vec<u32> = (0..n as u32)
            .filter(|&id| types[id as usize].is_partitioned())
            .collect();
        partition_tokens.sort_by_key(|&id| std::cmp::Reverse(pieces[id as usize].len()));

        let bytes = pieces
            .iter()
            .zip(&types)
            .map(|(piece, &ty)| piece_bytes(kind, piece, ty))
            .collect();

        let inner = match &pre_split {
            Some(pre_split) => build_byte_level(&md, &pieces, &piece_to_id, pre_split)?,
            None => build_sentencepiece(&md, &pieces, &types, &piece_to_id, unk, add_space_prefix)?,
        };
        let mut tokenizer = Self {
            inner,
            kind,
            pieces,
            types,
            bytes,
            piece_to_id,
            partition_tokens,
            bos,
            eos,
            eog,
            add_bos,
            add_space_prefix,
        };
        tokenizer.register_added_tokens()?;
        Ok(tokenizer)
    }

    /// Encode text to token ids.
    ///
    /// `add_bos`: put BOS in front if the model's metadata asks for it
    /// (`tokenizer.ggml.add_bos_token`; when absent, llama.cpp's default: yes for
    /// SentencePiece and Llama 3 style vocabularies, no for other gpt2 ones). EOS is never
    /// appended. `parse_special`: control tokens written literally in the text (such as
    /// `<|im_start|>`) become their ids, as llama.cpp does with `special = true` for
    /// chat-templated prompts; otherwise they are tokenized as plain text.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_bos && self.add_bos {
            match self.bos {
                Some(bos) => ids.push(bos),
                None => tracing::warn!("the model asks for BOS but names no BOS token"),
            }
        }
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Token(id) => ids.push(id),
                Fragment::Text(text) => self.encode_plain(text, &mut ids)?,
            }
        }
        Ok(ids)
    }

    /// Decode ids to text. `skip_special`: drop control tokens (BOS, EOS, `<|im_end|>`...).
    ///
    /// The result is the concatenation of [`Tokenizer::token_bytes`] (minus the space
    /// SentencePiece encoding put in front), with invalid UTF-8 replaced by U+FFFD. Unlike
    /// llama.cpp and Hugging Face, no "clean up" of spaces before punctuation is done:
    /// decoding round-trips and agrees with [`StreamDecoder`].
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut bytes = Vec::new();
        let mut state = self.decode_start();
        for &id in ids {
            self.decode_into(id, skip_special, &mut state, &mut bytes)?;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Every id that ends generation, ascending: EOS, EOT, EOM, and tokens such as
    /// `<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, `</s>`, `<end_of_turn>` — llama.cpp's
    /// end-of-generation set.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// The id of a vocabulary piece, spelled as stored (e.g. `<|im_end|>`, `Ġthe`, `▁the`).
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.piece_to_id.get(piece).copied()
    }

    /// The raw vocabulary pieces in id order, as stored in the GGUF.
    pub fn pieces(&self) -> &[String] {
        &self.pieces
    }

    /// Whether the token is special: a control or unknown token, which
    /// `decode(.., skip_special = true)` drops. User-defined tokens are text, not special.
    pub fn is_special(&self, id: u32) -> bool {
        self.types
            .get(id as usize)
            .is_some_and(|ty| ty.is_special())
    }

    /// The underlying `tokenizers::Tokenizer`. Its own `encode` matches control tokens
    /// always (as `parse_special = true` does) and never adds BOS.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The token's bytes as the model sees them: byte-level BPE pieces decoded to bytes,
    /// SentencePiece `<0xNN>` byte tokens resolved and `▁` turned into a space, control
    /// and user-defined tokens as their literal text, unused tokens empty. Out-of-range
    /// ids give no bytes.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bytes.get(id as usize).cloned().unwrap_or_default()
    }

    /// Split the text at literal occurrences of partitioned tokens, as llama.cpp's
    /// `tokenizer_st_partition` does: longest token text first, every occurrence.
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut fragments = if text.is_empty() {
            vec![]
        } else {
            vec![Fragment::Text(text)]
        };
        for &id in &self.partition_tokens {
            if !parse_special && self.types[id as usize].is_special() {
                continue;
            }
            let needle = self.pieces[id as usize].as_str();
            if !fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(needle)))
            {
                continue;
            }
            let mut split = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    split.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(needle) {
                    if at > 0 {
                        split.push(Fragment::Text(&rest[..at]));
                    }
                    split.push(Fragment::Token(id));
                    rest = &rest[at + needle.len()..];
                }
                if !rest.is_empty() {
                    split.push(Fragment::Text(rest));
                }
            }
            fragments = split;
        }
        fragments
    }

    /// Run normalizer, pre-tokenizer and BPE on text that holds no partitioned token.
    /// (Calling `inner.encode` instead would match added tokens again, ignoring
    /// `parse_special`.)
    /// Encode text that continues an output already under way (a grammar's forced text):
    /// no BOS, control tokens as plain text, and no SentencePiece space in front — that
    /// space belongs to the start of a text, and here the text starts mid-sequence.
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        self.encode_plain_with(text, !self.add_space_prefix, &mut ids)?;
        Ok(ids)
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        self.encode_plain_with(text, true, ids)
    }

    /// `prefix`: normalize as the vocabulary does, SentencePiece's space prefix included;
    /// otherwise only spaces become `▁`.
    fn encode_plain_with(&self, text: &str, prefix: bool, ids: &mut Vec<u32>) -> Result<()> {
        let mut pretokenized = PreTokenizedString::from(text);
        if prefix {
            if let Some(normalizer) = self.inner.get_normalizer() {
                pretokenized
                    .normalize(|s| normalizer.normalize(s))
                    .map_err(|e| anyhow!("normalizing text: {e}"))?;
            }
        } else {
            let spaces = Replace::new(" ", SPM_SPACE).map_err(|e| anyhow!("{e}"))?;
            pretokenized
                .normalize(|s| spaces.normalize(s))
                .map_err(|e| anyhow!("normalizing text: {e}"))?;
        }
        if let Some(pre_tokenizer) = self.inner.get_pre_tokenizer() {
            pre_tokenizer
                .pre_tokenize(&mut pretokenized)
                .map_err(|e| anyhow!("pre-tokenizing text: {e}"))?;
        }
        let model = self.inner.get_model();
        pretokenized
            .tokenize(|s| model.tokenize(s.get()))
            .map_err(|e| anyhow!("running BPE: {e}"))?;
        for (_, _, tokens) in pretokenized.get_splits(OffsetReferential::Original, OffsetType::None)
        {
            ids.extend(tokens.iter().flatten().map(|t| t.id));
        }
        Ok(())
    }

    /// Add control, unknown and user-defined tokens to `inner` as added tokens, so it
    /// splits them out of text and (for control ones) skips them when decoding.
    fn register_added_tokens(&mut self) -> Result<()> {
        let added: Vec<AddedToken> = self
            .partition_tokens
            .iter()
            .map(|&id| {
                AddedToken::from(self.pieces[id as usize].clone(), self.is_special(id))
                    .normalized(false)
            })
            .collect();
        self.inner
            .add_special_tokens(added)
            .map_err(|e| anyhow!("adding special tokens: {e}"))?;
        Ok(())
    }

    /// Decoding state at the start of a sequence.
    fn decode_start(&self) -> DecodeState {
        DecodeState {
            strip_space: self.add_space_prefix,
        }
    }

    /// Append what `id` decodes to. Shared by `decode` and `StreamDecoder`, so both
    /// produce the same bytes.
    fn decode_into(
        &self,
        id: u32,
        skip_special: bool,
        state: &mut DecodeState,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let ty = *self.types.get(id as usize).ok_or_else(|| {
            anyhow!(
                "token id {id} is out of range (vocabulary of {})",
                self.pieces.len()
            )
        })?;
        let bytes = self.bytes[id as usize].as_slice();
        if ty.is_partitioned() {
            if !(skip_special && ty.is_special()) {
                out.extend_from_slice(bytes);
            }
        } else {
            let bytes = match bytes {
                [b' ', rest @ ..] if state.strip_space && ty == TokenType::Normal => rest,
                _ => bytes,
            };
            out.extend_from_slice(bytes);
        }
        *state = self.state_after(ty);
        Ok(())
    }

    /// Decoding state once a token of type `ty` is decoded.
    fn state_after(&self, ty: TokenType) -> DecodeState {
        DecodeState {
            // Encoding put a space in front of the text that follows a special token.
            strip_space: self.add_space_prefix && ty.is_partitioned(),
        }
    }

    /// Decoding state once `ids` are decoded: only the last token matters.
    fn state_after_ids(&self, ids: &[u32]) -> DecodeState {
        match ids.last().and_then(|&id| self.types.get(id as usize)) {
            Some(&ty) => self.state_after(ty),
            None => self.decode_start(),
        }
    }
}

/// What decoding needs to remember between tokens.
#[derive(Clone, Copy, Debug)]
struct DecodeState {
    /// The next text token begins a stretch that encoding prefixed with a space.
    strip_space: bool,
}

/// Incremental detokenizer: push one id at a time, get the text it completes.
///
/// Never emits broken UTF-8: bytes of a character split across tokens wait until the
/// character is complete. The concatenation of everything `push` and `finish` return
/// equals `decode` of all the ids.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    state: DecodeState,
    /// Decoded bytes not yet returned: the start of an unfinished UTF-8 character.
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder for a sequence from its start.
    pub fn new(tokenizer: &'a Tokenizer, skip_special: bool) -> Self {
        Self {
            tokenizer,
            skip_special,
            state: tokenizer.decode_start(),
            pending: Vec::new(),
        }
    }

    /// A decoder for tokens that continue `prompt` (a model's output): what it returns is
    /// what the output adds to the prompt's text, so that `decode(prompt)` followed by it
    /// is `decode(prompt + output)`. With a SentencePiece vocabulary the space of a first
    /// `▁word` stays when the prompt ends in text (`"El"` + `▁gobierno` is
    /// `"El gobierno"`); it goes only where encoding would have added it, at the very start
    /// or after a control token such as `[/INST]`.
    pub fn continuing(tokenizer: &'a Tokenizer, skip_special: bool, prompt: &[u32]) -> Self {
        Self {
            state: tokenizer.state_after_ids(prompt),
            ..Self::new(tokenizer, skip_special)
        }
    }

    /// Add one token; returns the newly completed text (may be empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.tokenizer
            .decode_into(id, self.skip_special, &mut self.state, &mut self.pending)?;
        Ok(self.take_complete())
    }

    /// Whatever is left; an unfinished character becomes U+FFFD, as in `decode`.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }

    /// Take the longest prefix of `pending` that is final: valid characters, and invalid
    /// sequences (replaced by U+FFFD exactly as `String::from_utf8_lossy` does). Only an
    /// incomplete character at the very end stays behind.
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(valid) => {
                    out.push_str(valid);
                    start = self.pending.len();
                }
                Err(e) => {
                    let valid_end = start + e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    match e.error_len() {
                        Some(invalid) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid_end + invalid;
                        }
                        None => {
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}

/// Typed access to GGUF metadata, with errors that name the key.
struct Metadata<'a>(&'a HashMap<String, Value>);

impl Metadata<'_> {
    fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => bail!(
                "GGUF key {key}: expected a string, found {:?}",
                v.value_type()
            ),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => bail!(
                "GGUF key {key}: expected a bool, found {:?}",
                v.value_type()
            ),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&[Value]>> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Array(values)) => Ok(Some(values.as_slice())),
            Some(v) => bail!(
                "GGUF key {key}: expected an array, found {:?}",
                v.value_type()
            ),
        }
    }

    /// A token id key. Like llama.cpp, an id outside the vocabulary is ignored with a warning.
    fn token_id(&self, key: &str, vocab_size: usize) -> Result<Option<u32>> {
        let Some(value) = self.0.get(key) else {
            return Ok(None);
        };
        let id = integer(value).with_context(|| format!("GGUF key {key}"))?;
        if (0..vocab_size as i64).contains(&id) {
            Ok(Some(id as u32))
        } else {
            tracing::warn!(
                key,
                id,
                vocab_size,
                "token id outside the vocabulary; ignored"
            );
            Ok(None)
        }
    }
}

/// Any GGUF integer as i64 (writers differ on u32 / i32 for ids and token types).
fn integer(value: &Value) -> Result<i64> {
    Ok(match value {
        Value::U8(v) => i64::from(*v),
        Value::I8(v) => i64::from(*v),
        Value::U16(v) => i64::from(*v),
        Value::I16(v) => i64::from(*v),
        Value::U32(v) => i64::from(*v),
        Value::I32(v) => i64::from(*v),
        Value::U64(v) => i64::try_from(*v).context("integer too large")?,
        Value::I64(v) => *v,
        v => bail!("expected an integer, found {:?}", v.value_type()),
    })
}

fn read_pieces(md: &Metadata) -> Result<Vec<String>> {
    let values = md
        .array(key::TOKENS)?
        .ok_or_else(|| anyhow!("GGUF has no tokenizer: key {} missing", key::TOKENS))?;
    if values.is_empty() {
        bail!("GGUF tokenizer is empty: {} has no entries", key::TOKENS);
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            // llama.cpp renames empty pieces so that every piece is unique and matchable.
            Value::String(s) if s.is_empty() => {
                tracing::warn!(id = i, "empty vocabulary piece");
                Ok(format!("[EMPTY_{i}]"))
            }
            Value::String(s) => Ok(s.clone()),
            v => bail!(
                "{}[{i}]: expected a string, found {:?}",
                key::TOKENS,
                v.value_type()
            ),
        })
        .collect()
}

/// The end-of-generation set, as llama.cpp computes it. Tokens it recognises by text
/// are made control tokens, as llama.cpp does (a converter sometimes forgets to).
fn find_end_of_generation(
    md: &Metadata,
    pieces: &[String],
    piece_to_id: &HashMap<String, u32>,
    types: &mut [TokenType],
    eos: Option<u32>,
) -> Result<Vec<u32>> {
    let mut eog: Vec<u32> = eos.into_iter().collect();
    let make_control = |id: u32, types: &mut [TokenType]| {
        let ty = &mut types[id as usize];
        if !ty.is_special() {
            tracing::debug!(id, piece = %pieces[id as usize], "control-looking token made control");
            *ty = TokenType::Control;
        }
    };
    for role in ROLES_BY_TEXT {
        let id = match md.token_id(role.key, pieces.len())? {
            Some(id) => Some(id),
            None => {
                let mut found: Vec<u32> = role
                    .texts
                    .iter()
                    .filter_map(|t| piece_to_id.get(*t).copied())
                    .collect();
                found.sort_unstable();
                for &id in &found {
                    make_control(id, types);
                }
                found.first().copied()
            }
        };
        if role.ends_generation {
            eog.extend(id);
        }
    }
    for text in EOG_TEXTS {
        if let Some(&id) = piece_to_id.get(*text) {
            make_control(id, types);
            eog.push(id);
        }
    }
    eog.sort_unstable();
    eog.dedup();

    // gpt-oss (and solar-open) end a message with <|end|> but continue after it; their
    // turn ends at <|return|> / <|call|>. llama.cpp drops <|end|> from the set there.
    let has = |text: &str| piece_to_id.get(text).is_some_and(|id| eog.contains(id));
    if (has("<|return|>") && has("<|call|>") || has("<|calls|>") && has("<|flush|>"))
        && let Some(&end) = piece_to_id.get("<|end|>")
    {
        eog.retain(|&id| id != end);
        types[end as usize] = TokenType::UserDefined;
    }
    Ok(eog)
}

/// What a token decodes to, by vocabulary kind and token type (llama.cpp's
/// `token_to_piece` with `special = true`).
fn piece_bytes(kind: VocabKind, piece: &str, ty: TokenType) -> Vec<u8> {
    match ty {
        TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
            piece.as_bytes().to_vec()
        }
        TokenType::Byte => match parse_byte_token(piece) {
            Some(byte) => vec![byte],
            None => piece.as_bytes().to_vec(),
        },
        TokenType::Normal => match kind {
            VocabKind::SentencePiece => piece.replace(SPM_SPACE, " ").into_bytes(),
            VocabKind::ByteLevelBpe => byte_level_decode(piece),
        },
        TokenType::Unused | TokenType::Undefined => Vec::new(),
    }
}

/// `<0x41>` -> 0x41.
fn parse_byte_token(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the
/// other bytes are shifted to U+0100 and up so that every byte is a visible character.
fn byte_level_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for (byte, slot) in table.iter_mut().enumerate() {
        let b = byte as u32;
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let code = if printable {
            b
        } else {
            shifted += 1;
            0xFF + shifted
        };
        *slot = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    table
}

/// A byte-level BPE piece back to its bytes. Characters outside GPT-2's alphabet (which
/// a well-formed vocabulary does not have) are kept as their UTF-8.
fn byte_level_decode(piece: &str) -> Vec<u8> {
    thread_local! {
        static CHAR_TO_BYTE: HashMap<char, u8> = byte_level_alphabet()
            .iter()
            .enumerate()
            .map(|(byte, &c)| (c, byte as u8))
            .collect();
    }
    CHAR_TO_BYTE.with(|table| {
        let mut out = Vec::with_capacity(piece.len());
        for c in piece.chars() {
            match table.get(&c) {
                Some(&byte) => out.push(byte),
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        out
    })
}

/// The piece -> id map the `tokenizers` BPE model takes. Where a piece repeats, the last
/// id wins, as in llama.cpp.
fn bpe_vocab(pieces: &[String]) -> Vocab {
    pieces
        .iter()
        .enumerate()
        .map(|(id, p)| (p.clone(), id as u32))
        .collect()
}

/// gpt2 vocabularies: regex splits, then byte-level BPE with the GGUF's merge list.
fn build_byte_level(
    md: &Metadata,
    pieces: &[String],
    piece_to_id: &HashMap<String, u32>,
    pre_split: &PreSplit,
) -> Result<tokenizers::Tokenizer> {
    let merge_values = md
        .array(key::MERGES)?
        .ok_or_else(|| anyhow!("gpt2 tokenizer has no merges: key {} missing", key::MERGES))?;
    let mut merges = Vec::with_capacity(merge_values.len());
    let mut seen = std::collections::HashSet::new();
    let mut skipped = 0usize;
    for (i, value) in merge_values.iter().enumerate() {
        let Value::String(merge) = value else {
            bail!(
                "{}[{i}]: expected a string, found {:?}",
                key::MERGES,
                value.value_type()
            );
        };
        // "left right"; the split is the first space after the first character, so that
        // a left part that is itself a space still parses (as llama.cpp does).
        let split_at = merge
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(at, _)| at);
        let Some(at) = split_at else {
            skipped += 1;
            continue;
        };
        let (left, right) = (&merge[..at], &merge[at + 1..]);
        // The tokenizers crate rejects merges whose parts or result are not tokens;
        // llama.cpp would never produce such a token either, so dropping them is harmless.
        let usable = piece_to_id.contains_key(left)
            && piece_to_id.contains_key(right)
            && piece_to_id.contains_key(&format!("{left}{right}"));
        if !usable || !seen.insert((left, right)) {
            skipped += 1;
            continue;
        }
        merges.push((left.to_string(), right.to_string()));
    }
    if skipped > 0 {
        tracing::debug!(skipped, "unusable or repeated merges skipped");
    }

    let model = BPE::builder()
        .vocab_and_merges(bpe_vocab(pieces), merges)
        .ignore_merges(pre_split.ignore_merges)
        .build()
        .map_err(|e| anyhow!("building the BPE model from {}: {e}", key::MERGES))?;

    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(pre_split.regexes.len() + 1);
    for regex in pre_split.regexes {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| anyhow!("compiling pre-tokenizer regex {regex:?}: {e}"))?;
        steps.push(split.into());
    }
    // The regexes already split; ByteLevel only maps bytes to GPT-2's alphabet.
    steps.push(ByteLevel::new(false, false, false).into());

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_pre_tokenizer(Some(PreTokenizerSequence::new(steps)))
        .with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

/// llama (SentencePiece) vocabularies: BPE whose merges are ranked by the score of the
/// piece they make. That is llama.cpp's SPM algorithm — repeatedly join the adjacent
/// pair whose concatenation is the best-scoring piece — in the form the tokenizers
/// crate runs. Unknown characters fall back to `<0xNN>` byte tokens.
fn build_sentencepiece(
    md: &Metadata,
    pieces: &[String],
    types: &[TokenType],
    piece_to_id: &HashMap<String, u32>,
    unk: Option<u32>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    let scores: Vec<f32> = match md.array(key::SCORES)? {
        Some(values) => {
            if values.len() < pieces.len() {
                bail!(
                    "{} has {} entries for {} tokens",
                    key::SCORES,
                    values.len(),
                    pieces.len()
                );
            }
            values[..pieces.len()]
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::F32(s) => Ok(*s),
                    // llama.cpp accepts integer scores too.
                    v => integer(v)
                        .map(|s| s as f32)
                        .with_context(|| format!("{}[{i}]", key::SCORES)),
                })
                .collect::<Result<_>>()?
        }
        None => {
            tracing::warn!(
                "SentencePiece vocabulary without {}; merging by id",
                key::SCORES
            );
            vec![0.0; pieces.len()]
        }
    };

    // Every way to cut a piece into two pieces is a merge, ranked by the piece's score.
    // Byte tokens are spelled `<0xNN>` and are never the result of joining text.
    let mut ranked: Vec<(f32, u32, usize)> = Vec::new();
    for (id, piece) in pieces.iter().enumerate() {
        if types[id] == TokenType::Byte {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            if piece_to_id.contains_key(&piece[..at]) && piece_to_id.contains_key(&piece[at..]) {
                ranked.push((scores[id], id as u32, at));
            }
        }
    }
    // Best score first; ties by id, then by cut (llama.cpp breaks ties by position in
    // the text instead, which only matters for pieces with equal scores).
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges = ranked
        .into_iter()
        .map(|(_, id, at)| {
            let piece = &pieces[id as usize];
            (piece[..at].to_string(), piece[at..].to_string())
        })
        .collect();

    let mut builder = BPE::builder()
        .vocab_and_merges(bpe_vocab(pieces), merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(pieces[unk as usize].clone());
    }
    let model = builder
        .build()
        .map_err(|e| anyhow!("building the SentencePiece model: {e}"))?;

    let replace_space = Replace::new(" ", SPM_SPACE).map_err(|e| anyhow!("{e}"))?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![
            Prepend::new(SPM_SPACE.to_string()).into(),
            replace_space.into(),
        ])
        .into()
    } else {
        replace_space.into()
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPM_SPACE, " ")
            .map_err(|e| anyhow!("{e}"))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(|e| anyhow!("setting the normalizer: {e}"))?
        .with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// One reference tokenization made by llama.cpp (see tests/fixtures/gen_tokenizer_fixtures.py).
    #[derive(Deserialize)]
    struct Case {
        text: String,
        add_bos: bool,
        parse_special: bool,
        ids: Vec<u32>,
    }

    #[derive(Deserialize)]
    struct Fixture {
        gguf: String,
        vocab_size: usize,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        add_bos: bool,
        eog_ids: Vec<u32>,
        cases: Vec<Case>,
    }

    fn load_gguf(path: &std::path::Path) -> Tokenizer {
        let mut file =
            std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let content = candle_core::quantized::gguf_file::Content::read(&mut file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Tokenizer::from_gguf_metadata(&content.metadata)
            .unwrap_or_else(|e| panic!("tokenizer of {}: {e:#}", path.display()))
    }

    /// Check a GGUF against its llama.cpp fixture: every case encodes to llama.cpp's ids
    /// and decodes back to the text.
    fn check_against_fixture(tok: &Tokenizer, fixture_json: &str) {
        let fixture: Fixture = serde_json::from_str(fixture_json).expect("fixture JSON");
        assert_eq!(
            tok.vocab_size(),
            fixture.vocab_size,
            "{}: vocab size",
            fixture.gguf
        );
        assert_eq!(tok.bos_id(), fixture.bos_id, "{}: BOS", fixture.gguf);
        assert_eq!(tok.eos_id(), fixture.eos_id, "{}: EOS", fixture.gguf);
        assert_eq!(tok.add_bos, fixture.add_bos, "{}: add_bos", fixture.gguf);
        assert_eq!(
            tok.eog_ids(),
            fixture.eog_ids.as_slice(),
            "{}: EOG set",
            fixture.gguf
        );

        let mut failures = Vec::new();
        for case in &fixture.cases {
            let ids = tok
                .encode(&case.text, case.add_bos, case.parse_special)
                .expect("encode");
            if ids != case.ids {
                failures.push(format!(
                    "encode({:?}, add_bos={}, parse_special={})\n   got {:?}\n  want {:?}",
                    case.text, case.add_bos, case.parse_special, ids, case.ids
                ));
                continue;
            }
            // Round trip: the text comes back, after the BOS piece if one was added.
            let bos_text = match (case.add_bos && tok.add_bos, tok.bos_id()) {
                (true, Some(bos)) => String::from_utf8_lossy(&tok.token_bytes(bos)).into_owned(),
                _ => String::new(),
            };
            let decoded = tok.decode(&ids, false).expect("decode");
            if decoded != format!("{bos_text}{}", case.text) {
                failures.push(format!(
                    "decode({ids:?}) = {decoded:?}, want {:?}",
                    case.text
                ));
            }
            let streamed = stream_all(tok, &ids, false);
            assert_eq!(
                streamed, decoded,
                "streamed decode differs for {:?}",
                case.text
            );
        }
        assert!(
            failures.is_empty(),
            "{}: {} of {} cases differ from llama.cpp:\n{}",
            fixture.gguf,
            failures.len(),
            fixture.cases.len(),
            failures.join("\n")
        );
    }

    /// Push ids one by one; no chunk may hold a replacement character unless the
    /// complete decode does.
    fn stream_all(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
        let whole = tok.decode(ids, skip_special).expect("decode");
        let mut stream = StreamDecoder::new(tok, skip_special);
        let mut out = String::new();
        for &id in ids {
            let chunk = stream.push(id).expect("push");
            if !whole.contains(char::REPLACEMENT_CHARACTER) {
                assert!(
                    !chunk.contains(char::REPLACEMENT_CHARACTER),
                    "broken UTF-8 in {chunk:?}"
                );
            }
            out.push_str(&chunk);
        }
        out.push_str(&stream.finish());
        out
    }

    fn env_path(var: &str) -> Option<std::path::PathBuf> {
        match std::env::var_os(var) {
            Some(path) => Some(path.into()),
            // CI provides every file (scripts/test.sh); only a local run may skip.
            None if std::env::var_os("CI").is_some() => panic!("{var} must be set in CI"),
            None => {
                eprintln!("{var} is not set; skipping this test");
                None
            }
        }
    }

    #[test]
    fn smollm2_matches_llama_cpp() {
        let Some(path) = env_path("VERRE_SMOLLM2_GGUF") else {
            return;
        };
        let tok = load_gguf(&path);
        check_against_fixture(
            &tok,
            include_str!("../tests/fixtures/tokenizer-smollm2.json"),
        );

        assert_eq!(tok.token_id("<|im_end|>"), Some(2));
        assert!(tok.is_special(2));
        let ids = tok
            .encode("<|im_start|>user\n<|im_end|>", false, true)
            .expect("encode");
        assert_eq!((ids[0], ids[ids.len() - 1]), (1, 2));
        assert_eq!(tok.decode(&ids, true).expect("decode"), "user\n");
        // SmolLM2 puts no space in front of the text and splits digits one by one.
        let ids = tok.encode("Hi 2024", false, true).expect("encode");
        let pieces: Vec<&str> = ids
            .iter()
            .map(|&id| tok.pieces()[id as usize].as_str())
            .collect();
        assert_eq!(pieces, ["Hi", "Ġ", "2", "0", "2", "4"]);
    }

    #[test]
    fn smollm2_streams_multibyte_text() {
        let Some(path) = env_path("VERRE_SMOLLM2_GGUF") else {
            return;
        };
        let tok = load_gguf(&path);
        let text = "Café crème, naïve façade — 日本語 😀👍🏽 🇫🇷 done";
        let ids = tok.encode(text, false, true).expect("encode");
        // The emoji and CJK need several byte-level tokens each, or this tests nothing.
        assert!(
            ids.iter()
                .any(|&id| std::str::from_utf8(&tok.token_bytes(id)).is_err())
        );
        assert_eq!(stream_all(&tok, &ids, false), text);
        assert_eq!(tok.decode(&ids, false).expect("decode"), text);
    }

    /// llama.cpp's vocabulary-only GGUFs (ggml-vocab-*.gguf in its source tree).
    fn check_vocab(file: &str, fixture_json: &str) {
        let Some(dir) = env_path("VERRE_LLAMA_VOCAB_DIR") else {
            return;
        };
        let tok = load_gguf(&dir.join(file));
        check_against_fixture(&tok, fixture_json);
    }

    #[test]
    fn llama_spm_matches_llama_cpp() {
        check_vocab(
            "ggml-vocab-llama-spm.gguf",
            include_str!("../tests/fixtures/tokenizer-llama-spm.json"),
        );
    }

    #[test]
    fn llama_bpe_matches_llama_cpp() {
        check_vocab(
            "ggml-vocab-llama-bpe.gguf",
            include_str!("../tests/fixtures/tokenizer-llama-bpe.json"),
        );
    }

    #[test]
    fn qwen2_matches_llama_cpp() {
        check_vocab(
            "ggml-vocab-qwen2.gguf",
            include_str!("../tests/fixtures/tokenizer-qwen2.json"),
        );
    }

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
    }

    /// A tiny SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then
    /// `pieces` with their scores (higher merges first).
    fn tiny_spm(pieces: &[(&str, f32)], extra: &[(&str, Value)]) -> HashMap<String, Value> {
        let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
        let mut types = vec![2, 3, 3];
        for byte in 0..=255u8 {
            tokens.push(format!("<0x{byte:02X}>"));
            types.push(6);
        }
        let mut scores = vec![0.0f32; tokens.len()];
        for (piece, score) in pieces {
            tokens.push(piece.to_string());
            types.push(1);
            scores.push(*score);
        }
        let mut md = HashMap::from([
            (key::MODEL.to_string(), Value::String("llama".into())),
            (
                key::TOKENS.to_string(),
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            (
                key::SCORES.to_string(),
                Value::Array(scores.into_iter().map(Value::F32).collect()),
            ),
            (
                key::TOKEN_TYPE.to_string(),
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
        ]);
        for (k, v) in extra {
            md.insert(k.to_string(), v.clone());
        }
        md
    }

    /// Ids of the tiny SentencePiece pieces, by text.
    fn ids_of(tok: &Tokenizer, pieces: &[&str]) -> Vec<u32> {
        pieces
            .iter()
            .map(|p| tok.token_id(p).unwrap_or_else(|| panic!("no piece {p:?}")))
            .collect()
    }

    const SPM_PIECES: &[(&str, f32)] = &[
        ("▁", -1.0),
        ("h", -50.0),
        ("e", -51.0),
        ("l", -52.0),
        ("o", -53.0),
        ("w", -54.0),
        ("r", -55.0),
        ("d", -56.0),
        ("ll", -2.0),
        ("▁h", -3.0),
        ("▁he", -4.0),
        ("llo", -5.0),
        ("▁hello", -6.0),
        // Listed out of score order on purpose: merging must follow scores, not ids.
        ("wo", -9.0),
        ("▁w", -8.0),
        ("or", -7.0),
    ];

    #[test]
    fn sentencepiece_merges_by_score_with_space_prefix_and_byte_fallback() {
        let tok = Tokenizer::from_gguf_metadata(&tiny_spm(SPM_PIECES, &[])).expect("tokenizer");
        assert_eq!(tok.bos_id(), Some(1));
        assert_eq!(tok.eos_id(), Some(2));
        assert_eq!(tok.eog_ids(), [2]);

        // "▁hello": ll, ▁h, ▁he, llo, ▁hello in score order.
        assert_eq!(
            tok.encode("hello", false, false).expect("encode"),
            ids_of(&tok, &["▁hello"])
        );
        // BOS is on by default for SentencePiece.
        let mut want = vec![1];
        want.extend(ids_of(&tok, &["▁hello"]));
        assert_eq!(tok.encode("hello", true, false).expect("encode"), want);

        // "▁world": "or" (-7) beats "▁w" (-8) and "wo" (-9), then "▁" + "w" join; by id
        // order "wo" would have won instead.
        assert_eq!(
            tok.encode("world", false, false).expect("encode"),
            ids_of(&tok, &["▁w", "or", "l", "d"])
        );

        // "é" is not a piece: its UTF-8 bytes, as byte tokens.
        let ids = tok.encode("hello é", false, false).expect("encode");
        assert_eq!(ids, ids_of(&tok, &["▁hello", "▁", "<0xC3>", "<0xA9>"]));
        assert_eq!(tok.decode(&ids, false).expect("decode"), "hello é");
        assert_eq!(tok.token_bytes(ids[2]), [0xC3]);

        // Special tokens: with parse_special they are ids, and the text after one gets
        // its own space prefix (as in llama.cpp); decoding takes that space off again.
        let ids = tok.encode("<s>hello</s>", false, true).expect("encode");
        let mut want = vec![1];
        want.extend(ids_of(&tok, &["▁hello"]));
        want.push(2);
        assert_eq!(ids, want);
        assert_eq!(tok.decode(&ids, false).expect("decode"), "<s>hello</s>");
        assert_eq!(tok.decode(&ids, true).expect("decode"), "hello");
        // Without parse_special, "<s>" is text: here all byte fallback.
        let ids = tok.encode("<s>", false, false).expect("encode");
        assert_eq!(ids, ids_of(&tok, &["▁", "<0x3C>", "<0x73>", "<0x3E>"]));
        assert_eq!(tok.decode(&ids, true).expect("decode"), "<s>");
    }

    /// Texts for the continuation checks: prompt-like text in several scripts, spaces,
    /// newlines, and control tokens of the vocabularies at hand.
    const CONTINUATION_TEXTS: &[&str] = &[
        "El presidente del gobierno dijo que",
        "Hola, el gobierno",
        "  two leading spaces, then  two inside",
        "naïve café, 日本語 and 🎉 emoji",
        "line\nbreak\n\n  indented\tcode()",
        "<s>[INST] Hi [/INST] gobierno</s>",
        "<|im_start|>user\nhola<|im_end|>\n<|im_start|>assistant\n gobierno",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhola<|eot_id|> gobierno",
    ];

    /// A model's output continues its prompt: for every split of a text's tokens into a
    /// prompt and an output, decoding the prompt and then the output with
    /// [`StreamDecoder::continuing`] gives the text of the whole (the output's first
    /// `▁word` keeps its space). Splits inside a character are skipped.
    fn check_continuation(tok: &Tokenizer, name: &str) {
        for text in CONTINUATION_TEXTS {
            let ids = tok.encode(text, true, true).expect("encode");
            for skip_special in [false, true] {
                let whole = tok.decode(&ids, skip_special).expect("decode");
                for k in 0..=ids.len() {
                    let (prompt, output) = ids.split_at(k);
                    let head = tok.decode(prompt, skip_special).expect("decode");
                    if head.contains(char::REPLACEMENT_CHARACTER) {
                        continue;
                    }
                    let mut stream = StreamDecoder::continuing(tok, skip_special, prompt);
                    let mut tail = String::new();
                    for &id in output {
                        tail.push_str(&stream.push(id).expect("push"));
                    }
                    tail.push_str(&stream.finish());
                    assert_eq!(
                        format!("{head}{tail}"),
                        whole,
                        "{name}: {text:?} split after {k} tokens (skip_special {skip_special}): prompt {head:?}, output {tail:?}"
                    );
                }
            }
        }
    }

    /// The first output token of the bug report: the word piece `gobierno` after the
    /// prompt "El" comes out as " gobierno", as llama.cpp returns it.
    fn check_first_word_keeps_its_space(tok: &Tokenizer, name: &str, piece: &str) {
        let word = tok
            .token_id(piece)
            .unwrap_or_else(|| panic!("{name}: no piece {piece:?}"));
        let prompt = tok.encode("El", true, true).expect("encode");
        let mut stream = StreamDecoder::continuing(tok, true, &prompt);
        assert_eq!(stream.push(word).expect("push"), " gobierno", "{name}");
        assert_eq!(stream.push(word).expect("push"), " gobierno", "{name}");
    }

    #[test]
    fn output_continues_the_prompt_tiny_sentencepiece() {
        let tok = Tokenizer::from_gguf_metadata(&tiny_spm(SPM_PIECES, &[])).expect("tokenizer");
        check_continuation(&tok, "tiny spm");
        let hello = ids_of(&tok, &["▁hello"])[0];
        // After prompt text the space stays; at the start, or after a control token such as
        // BOS, it is the one encoding added, and goes.
        let prompt = tok.encode("hello", true, false).expect("encode");
        assert_eq!(
            StreamDecoder::continuing(&tok, true, &prompt)
                .push(hello)
                .expect("push"),
            " hello"
        );
        assert_eq!(
            StreamDecoder::continuing(&tok, true, &[1])
                .push(hello)
                .expect("push"),
            "hello"
        );
        assert_eq!(
            StreamDecoder::continuing(&tok, true, &[])
                .push(hello)
                .expect("push"),
            "hello"
        );
    }

    #[test]
    fn output_continues_the_prompt_llama_spm() {
        let Some(dir) = env_path("VERRE_LLAMA_VOCAB_DIR") else {
            return;
        };
        let tok = load_gguf(&dir.join("ggml-vocab-llama-spm.gguf"));
        check_continuation(&tok, "llama-spm");
        check_first_word_keeps_its_space(&tok, "llama-spm", "▁gobierno");
    }

    /// Forced text in the middle of an output (a grammar's `{"`) must decode to exactly
    /// itself: no SentencePiece space in front.
    #[test]
    fn continuation_text_gets_no_space_prefix() {
        let Some(dir) = env_path("VERRE_LLAMA_VOCAB_DIR") else {
            return;
        };
        for vocab in [
            "ggml-vocab-llama-spm.gguf",
            "ggml-vocab-llama-bpe.gguf",
            "ggml-vocab-qwen2.gguf",
        ] {
            let tok = load_gguf(&dir.join(vocab));
            for text in ["{\"", " {\"name\": 1}", "gobierno", "\n  \"x\""] {
                let ids = tok.encode_continuation(text).expect("encode");
                let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id)).collect();
                assert_eq!(String::from_utf8_lossy(&bytes), text, "{vocab}: {ids:?}");
            }
        }
        // The ordinary encoding of the start of a text keeps its prefix.
        let spm = load_gguf(&dir.join("ggml-vocab-llama-spm.gguf"));
        let first = spm.encode("{", false, false).expect("encode")[0];
        assert!(spm.pieces()[first as usize].starts_with('▁'));
    }

    #[test]
    fn output_continues_the_prompt_llama_bpe() {
        let Some(dir) = env_path("VERRE_LLAMA_VOCAB_DIR") else {
            return;
        };
        let tok = load_gguf(&dir.join("ggml-vocab-llama-bpe.gguf"));
        check_continuation(&tok, "llama-bpe");
        check_first_word_keeps_its_space(&tok, "llama-bpe", "Ġgobierno");
    }

    #[test]
    fn output_continues_the_prompt_qwen2() {
        let Some(dir) = env_path("VERRE_LLAMA_VOCAB_DIR") else {
            return;
        };
        let tok = load_gguf(&dir.join("ggml-vocab-qwen2.gguf"));
        check_continuation(&tok, "qwen2");
        check_first_word_keeps_its_space(&tok, "qwen2", "Ġgobierno");
    }

    #[test]
    fn output_continues_the_prompt_smollm2() {
        let Some(path) = env_path("VERRE_SMOLLM2_GGUF") else {
            return;
        };
        check_continuation(&load_gguf(&path), "smollm2");
    }

    #[test]
    fn sentencepiece_without_space_prefix() {
        let md = tiny_spm(
            SPM_PIECES,
            &[
                (key::ADD_SPACE_PREFIX, Value::Bool(false)),
                (key::ADD_BOS, Value::Bool(false)),
            ],
        );
        let tok = Tokenizer::from_gguf_metadata(&md).expect("tokenizer");
        assert_eq!(
            tok.encode("hello", true, false).expect("encode"),
            ids_of(&tok, &["h", "e", "llo"])
        );
        let ids = tok.encode(" hello", false, false).expect("encode");
        assert_eq!(ids, ids_of(&tok, &["▁hello"]));
        assert_eq!(tok.decode(&ids, false).expect("decode"), " hello");
    }

    #[test]
    fn stream_decoder_never_splits_utf8() {
        let tok = Tokenizer::from_gguf_metadata(&tiny_spm(SPM_PIECES, &[])).expect("tokenizer");
        // Nothing but "▁" is a piece here, so every character goes out as bytes.
        let text = "é 😀 中文 👍🏽!";
        let ids = tok.encode(text, true, false).expect("encode");
        assert!(ids.len() > text.chars().count());
        let mut stream = StreamDecoder::new(&tok, true);
        let mut chunks = Vec::new();
        for &id in &ids {
            chunks.push(stream.push(id).expect("push"));
        }
        chunks.push(stream.finish());
        for chunk in &chunks {
            assert!(
                !chunk.contains(char::REPLACEMENT_CHARACTER),
                "chunk {chunk:?}"
            );
        }
        assert!(
            chunks.iter().any(String::is_empty),
            "some bytes must have been held back"
        );
        assert_eq!(chunks.concat(), tok.decode(&ids, true).expect("decode"));
        assert_eq!(chunks.concat(), text);
    }

    #[test]
    fn stream_decoder_replaces_invalid_bytes_like_decode() {
        let tok = Tokenizer::from_gguf_metadata(&tiny_spm(SPM_PIECES, &[])).expect("tokenizer");
        let byte = |b: u8| tok.token_id(&format!("<0x{b:02X}>")).expect("byte token");
        // A lone continuation byte, a cut-off 3-byte sequence followed by ASCII, and a
        // cut-off sequence at the very end.
        let ids = [
            byte(b'a'),
            byte(0x80),
            byte(0xE2),
            byte(0x82),
            byte(b'b'),
            byte(0xF0),
            byte(0x9F),
        ];
        let whole = tok.decode(&ids, false).expect("decode");
        assert_eq!(whole, "a\u{FFFD}\u{FFFD}b\u{FFFD}");
        assert_eq!(stream_all(&tok, &ids, false), whole);
    }

    /// A tiny gpt2 vocabulary: GPT-2's 256 byte characters, a few merges, and ChatML tokens.
    fn tiny_gpt2(pre: &str) -> HashMap<String, Value> {
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
        ];
        let mut types = vec![3, 3, 3];
        for c in byte_level_alphabet() {
            tokens.push(c.to_string());
            types.push(1);
        }
        let merges = ["1 2", "Ġ 12", "h i", "Ġ hi"];
        for merge in merges {
            tokens.push(merge.replace(' ', ""));
            types.push(1);
        }
        HashMap::from([
            (key::MODEL.to_string(), Value::String("gpt2".into())),
            (key::PRE.to_string(), Value::String(pre.into())),
            (
                key::TOKENS.to_string(),
                Value::Array(tokens.into_iter().map(Value::String).collect()),
            ),
            (
                key::TOKEN_TYPE.to_string(),
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            (key::MERGES.to_string(), strings(&merges)),
            (key::EOS_ID.to_string(), Value::U32(2)),
            (key::BOS_ID.to_string(), Value::U32(1)),
        ])
    }

    fn gpt2_pieces(tok: &Tokenizer, text: &str) -> Vec<String> {
        let ids = tok.encode(text, true, true).expect("encode");
        ids.iter()
            .map(|&id| tok.pieces()[id as usize].clone())
            .collect()
    }

    #[test]
    fn gpt2_pre_tokenizer_follows_tokenizer_ggml_pre() {
        // GPT-2 keeps " 12" together; SmolLM's split isolates every digit first.
        let gpt2 = Tokenizer::from_gguf_metadata(&tiny_gpt2("gpt2")).expect("tokenizer");
        assert_eq!(gpt2_pieces(&gpt2, "hi 12"), ["hi", "Ġ12"]);
        let smollm = Tokenizer::from_gguf_metadata(&tiny_gpt2("smollm")).expect("tokenizer");
        assert_eq!(gpt2_pieces(&smollm, "hi 12"), ["hi", "Ġ", "1", "2"]);
        // No BOS for gpt2 vocabularies unless the metadata asks; no space prefix either.
        assert_eq!(
            smollm.encode("hi", true, true).expect("encode"),
            [smollm.token_id("hi").expect("hi")]
        );
        // An unknown pre-tokenizer falls back to GPT-2's split.
        let unknown = Tokenizer::from_gguf_metadata(&tiny_gpt2("no-such-pre")).expect("tokenizer");
        assert_eq!(gpt2_pieces(&unknown, "hi 12"), ["hi", "Ġ12"]);
        // Llama 3 style vocabularies add BOS by default.
        let llama3 = Tokenizer::from_gguf_metadata(&tiny_gpt2("llama-bpe")).expect("tokenizer");
        assert_eq!(llama3.encode("hi", true, true).expect("encode")[0], 1);
    }

    #[test]
    fn gpt2_special_tokens_and_eog() {
        let tok = Tokenizer::from_gguf_metadata(&tiny_gpt2("smollm")).expect("tokenizer");
        assert_eq!(tok.eog_ids(), [0, 2]);
        let text = "<|im_start|>user\nhi<|im_end|>\n";
        let ids = tok.encode(text, false, true).expect("encode");
        assert_eq!(ids.first(), Some(&1));
        assert!(ids.contains(&2));
        assert_eq!(tok.decode(&ids, false).expect("decode"), text);
        assert_eq!(tok.decode(&ids, true).expect("decode"), "user\nhi\n");
        // Without parse_special the markers are plain text.
        let plain = tok.encode(text, false, false).expect("encode");
        assert!(!plain.iter().any(|&id| tok.is_special(id)));
        assert_eq!(tok.decode(&plain, true).expect("decode"), text);
        // The inner tokenizers::Tokenizer agrees for parse_special = true.
        let inner = tok.inner().encode(text, false).expect("inner encode");
        assert_eq!(inner.get_ids(), ids.as_slice());
        assert_eq!(tok.inner().decode(&ids, false).expect("inner decode"), text);

        // Multi-byte characters come out of byte-level pieces whole.
        let ids = tok.encode("é😀", false, true).expect("encode");
        assert_eq!(ids.len(), 6);
        assert_eq!(stream_all(&tok, &ids, false), "é😀");
    }

    #[test]
    fn token_bytes_resolve_each_vocabulary_kind() {
        let gpt2 = Tokenizer::from_gguf_metadata(&tiny_gpt2("gpt2")).expect("tokenizer");
        assert_eq!(
            gpt2.token_bytes(gpt2.token_id("Ġhi").expect("piece")),
            b" hi"
        );
        assert_eq!(gpt2.token_bytes(gpt2.token_id("Ċ").expect("piece")), b"\n");
        assert_eq!(gpt2.token_bytes(gpt2.token_id("Ã").expect("piece")), [0xC3]);
        assert_eq!(gpt2.token_bytes(2), b"<|im_end|>");
        assert!(gpt2.token_bytes(u32::MAX).is_empty());

        let spm = Tokenizer::from_gguf_metadata(&tiny_spm(SPM_PIECES, &[])).expect("tokenizer");
        assert_eq!(
            spm.token_bytes(spm.token_id("▁hello").expect("piece")),
            b" hello"
        );
        assert_eq!(
            spm.token_bytes(spm.token_id("<0x0A>").expect("piece")),
            b"\n"
        );
        assert_eq!(spm.token_bytes(1), b"<s>");
    }

    #[test]
    fn byte_level_alphabet_is_gpt2s() {
        let table = byte_level_alphabet();
        assert_eq!(table[b'!' as usize], '!');
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[0], 'Ā');
        assert_eq!(table[0xAD], 'Ń');
        let distinct: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn tokenizer_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |md: HashMap<String, Value>| {
            format!(
                "{:#}",
                Tokenizer::from_gguf_metadata(&md).expect_err("must fail")
            )
        };

        let mut md = tiny_gpt2("gpt2");
        md.remove(key::TOKENS);
        assert_eq!(
            err(md),
            "GGUF has no tokenizer: key tokenizer.ggml.tokens missing"
        );

        let mut md = tiny_gpt2("gpt2");
        md.remove(key::MODEL);
        assert!(err(md).contains("tokenizer.ggml.model"));

        let mut md = tiny_gpt2("gpt2");
        md.insert(key::MODEL.into(), Value::String("bert".into()));
        assert!(err(md).contains("\"bert\""));

        let mut md = tiny_gpt2("gpt2");
        md.insert(key::MODEL.into(), Value::String("t5".into()));
        assert!(err(md).contains("\"t5\""));

        let mut md = tiny_gpt2("gpt2");
        md.remove(key::MERGES);
        assert!(err(md).contains("tokenizer.ggml.merges"));

        let mut md = tiny_gpt2("gpt2");
        md.insert(key::TOKENS.into(), Value::String("oops".into()));
        assert!(err(md).contains("tokenizer.ggml.tokens: expected an array"));

        let tok = Tokenizer::from_gguf_metadata(&tiny_gpt2("gpt2")).expect("tokenizer");
        let message = format!("{:#}", tok.decode(&[u32::MAX], false).expect_err("bad id"));
        assert!(message.contains("out of range"), "{message}");
    }
}
