//! The paged key/value cache: fixed-size blocks in one pool, a block table per sequence,
//! and automatic prefix caching.
//!
//! Keys and values are stored in the pool's [`KvCacheType`]: f16 by default, as llama.cpp
//! stores them, or q8_0 / q4_0 (32-value blocks with an f16 scale: 0.53x / 0.28x the bytes
//! of f16), quantized as they are written and read by attention block by block. A block
//! holds [`BLOCK_TOKENS`] positions of every layer: in layer `l`, block `b` is
//! `[position][kv_head * head_dim]` at `b * BLOCK_TOKENS * width` of that layer's keys (and
//! values). A sequence ([`SeqKv`]) owns a list of block ids; attention reads its blocks in
//! order.
//!
//! Prefix caching: once a block is full, it is named by a hash of its tokens chained with
//! the hash of the block before it, so equal names mean equal prefixes. A new sequence
//! whose first blocks' names are known takes those blocks (reference counted) instead of
//! computing them. A block nobody references keeps its contents and its name until its
//! memory is needed: free blocks without a name are used first, then named ones, least
//! recently used first.
//!
//! [`KvCache`]: one sequence with a pool of its own, for the plain forward (tests, benches).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use anyhow::{Result, ensure};
use half::f16;
use half::vec::HalfBitsVecExt;

use crate::kernels::attention::{KvRows, MAX_HEAD_DIM};
use crate::kernels::key_offset::KeyOffset;
use crate::kernels::kv_rows::{QK, quantize_q4_0, quantize_q8_0, rotate};

/// Positions per block (a multiple of the attention kernel's key chunk).
pub const BLOCK_TOKENS: usize = 16;

/// How the cache stores keys and values (`--kv-cache-type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KvCacheType {
    /// 16 bits a value, as llama.cpp stores them by default.
    #[default]
    F16,
    /// ggml's q8_0: 32 signed bytes and an f16 scale per 32 values (8.5 bits a value).
    Q8_0,
    /// ggml's q4_0: 16 bytes and an f16 scale per 32 values (4.5 bits a value).
    Q4_0,
}

impl KvCacheType {
    pub const ALL: [KvCacheType; 3] = [KvCacheType::F16, KvCacheType::Q8_0, KvCacheType::Q4_0];

    pub fn name(self) -> &'static str {
        match self {
            KvCacheType::F16 => "f16",
            KvCacheType::Q8_0 => "q8_0",
            KvCacheType::Q4_0 => "q4_0",
        }
    }

    /// Bytes that `values` cached values take (a whole number of 32-blocks when quantized).
    pub fn bytes(self, values: usize) -> usize {
        match self {
            KvCacheType::F16 => values * 2,
            KvCacheType::Q8_0 => values / QK * (QK + 2),
            KvCacheType::Q4_0 => values / QK * (QK / 2 + 2),
        }
    }

    /// Whether a model whose attention heads have `head_dim` values can use this type:
    /// quantized rows are read one head at a time, in whole 32-blocks.
    pub fn check_head_dim(self, head_dim: usize) -> Result<()> {
        ensure!(
            self == KvCacheType::F16 || head_dim.is_multiple_of(QK),
            "the {} KV cache needs attention heads of a multiple of {QK} values; this model's \
             have {head_dim} (use --kv-cache-type f16)",
            self.name()
        );
        Ok(())
    }
}

impl std::fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvCacheType {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| anyhow::anyhow!("unknown KV cache type {s:?}: use f16, q8_0 or q4_0"))
    }
}

/// What a pool stores per position, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLayout {
    pub kind: KvCacheType,
    pub layers: usize,
    /// Values per position in one layer: `kv_heads * head_dim`.
    pub width: usize,
    pub head_dim: usize,
    /// Layers whose keys stay f16 in a quantized cache: their keys carry a large constant
    /// offset (a big key bias, as in Qwen2's first layers) that would take the bits of
    /// every 32-block, leaving the part that tells keys apart almost none. Empty: none.
    pub f16_key_layers: Vec<bool>,
    /// Layers whose quantized keys are stored less their bias's rotation (see
    /// `kernels::key_offset`): the same large offset, taken out before quantizing and added
    /// back by attention. Empty: none.
    pub key_offsets: Vec<Option<Arc<KeyOffset>>>,
}

impl KvLayout {
    /// Every layer stored as `kind`. Panics on heads a quantized `kind` cannot take
    /// (callers check with [`KvCacheType::check_head_dim`]).
    pub fn new(kind: KvCacheType, layers: usize, width: usize, head_dim: usize) -> Self {
        if let Err(e) = kind.check_head_dim(head_dim) {
            panic!("{e}");
        }
        assert!(
            width.is_multiple_of(head_dim),
            "rows of {width} values are not whole heads of {head_dim}"
        );
        Self {
            kind,
            layers,
            width,
            head_dim,
            f16_key_layers: Vec::new(),
            key_offsets: Vec::new(),
        }
    }

    /// The offset taken out of layer `l`'s stored keys, if any (never for f16 keys).
    pub fn key_offset(&self, layer: usize) -> Option<&Arc<KeyOffset>> {
        self.key_offsets
            .get(layer)
            .and_then(Option::as_ref)
            .filter(|_| self.key_type(layer) != KvCacheType::F16)
    }

    /// How layer `l`'s keys are stored.
    pub fn key_type(&self, layer: usize) -> KvCacheType {
        match self.f16_key_layers.get(layer) {
            Some(true) => KvCacheType::F16,
            _ => self.kind,
        }
    }

    /// Bytes one block of [`BLOCK_TOKENS`] positions takes over all layers, keys and values.
    pub fn block_bytes(&self) -> usize {
        let values = BLOCK_TOKENS * self.width;
        (0..self.layers)
            .map(|l| self.key_type(l).bytes(values) + self.kind.bytes(values))
            .sum()
    }
}

/// One layer's keys (or values) of every block, in the pool's storage type.
enum LayerRows {
    F16(Vec<f16>),
    Q8_0 { quants: Vec<i8>, scales: Vec<f16> },
    Q4_0 { quants: Vec<u8>, scales: Vec<f16> },
}

impl LayerRows {
    /// Room for `values` values. Zeroed vectors of integers come from the allocator's
    /// zeroed pages: no memset, nothing resident until written.
    fn new(kind: KvCacheType, values: usize) -> Self {
        let scales = || -> Vec<f16> { vec![0u16; values / QK].reinterpret_into() };
        match kind {
            KvCacheType::F16 => LayerRows::F16(vec![0u16; values].reinterpret_into()),
            KvCacheType::Q8_0 => LayerRows::Q8_0 {
                quants: vec![0; values],
                scales: scales(),
            },
            KvCacheType::Q4_0 => LayerRows::Q4_0 {
                quants: vec![0; values / 2],
                scales: scales(),
            },
        }
    }

    /// Store keys or values: as `write`, each head of `head_dim` values rotated first when
    /// quantized (see `kernels::kv_rows`).
    fn write_rotated(&mut self, at: usize, src: &[f32], head_dim: usize) {
        if let LayerRows::F16(_) = self {
            return self.write(at, src);
        }
        let mut head = [0f32; MAX_HEAD_DIM];
        let head = &mut head[..head_dim];
        for (h, src) in src.chunks_exact(head_dim).enumerate() {
            head.copy_from_slice(src);
            rotate(head);
            self.write(at + h * head_dim, head);
        }
    }

    /// Store `src` at value offset `at` (whole blocks when quantized).
    fn write(&mut self, at: usize, src: &[f32]) {
        let n = src.len();
        match self {
            LayerRows::F16(x) => {
                for (dst, &v) in x[at..at + n].iter_mut().zip(src) {
                    *dst = f16::from_f32(v);
                }
            }
            LayerRows::Q8_0 { quants, scales } => quantize_q8_0(
                src,
                &mut quants[at..at + n],
                &mut scales[at / QK..(at + n) / QK],
            ),
            LayerRows::Q4_0 { quants, scales } => quantize_q4_0(
                src,
                &mut quants[at / 2..(at + n) / 2],
                &mut scales[at / QK..(at + n) / QK],
            ),
        }
    }

    /// Values `at..at + len`, as attention reads them.
    fn rows(&self, at: usize, len: usize) -> KvRows<'_> {
        match self {
            LayerRows::F16(x) => KvRows::F16(&x[at..at + len]),
            LayerRows::Q8_0 { quants, scales } => KvRows::Q8_0 {
                quants: &quants[at..at + len],
                scales: &scales[at / QK..(at + len).div_ceil(QK)],
            },
            LayerRows::Q4_0 { quants, scales } => KvRows::Q4_0 {
                quants: &quants[at / 2..(at + len) / 2],
                scales: &scales[at / QK..(at + len).div_ceil(QK)],
            },
        }
    }
}

/// What a block's name covers: the name of the block before it and its own tokens. The
/// tokens are kept to rule out hash collisions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BlockName {
    hash: u64,
    tokens: [u32; BLOCK_TOKENS],
}

/// Block bookkeeping: reference counts, free lists and the prefix-cache index. No memory.
#[derive(Debug)]
pub struct BlockAllocator {
    refs: Vec<u32>,
    names: Vec<Option<BlockName>>,
    /// Free blocks without a name.
    empty: Vec<u32>,
    /// Free blocks with a name, by last use (oldest first), and each one's key in it.
    evictable: BTreeMap<u64, u32>,
    evict_key: Vec<u64>,
    tick: u64,
    by_hash: HashMap<u64, u32>,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> Self {
        Self {
            refs: vec![0; num_blocks],
            names: vec![None; num_blocks],
            empty: (0..num_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            evict_key: vec![0; num_blocks],
            tick: 0,
            by_hash: HashMap::new(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now (empty or evictable).
    pub fn available(&self) -> usize {
        self.empty.len() + self.evictable.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn used(&self) -> usize {
        self.num_blocks() - self.available()
    }

    /// A block for new contents, or `None` when every block is in use.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = match self.empty.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                if let Some(name) = self.names[b as usize].take() {
                    self.by_hash.remove(&name.hash);
                }
                b
            }
        };
        debug_assert_eq!(self.refs[block as usize], 0);
        self.refs[block as usize] = 1;
        Some(block)
    }

    /// One more reference to a block in use or cached.
    fn retain(&mut self, block: u32) {
        let b = block as usize;
        if self.refs[b] == 0 {
            let removed = self.evictable.remove(&self.evict_key[b]);
            debug_assert_eq!(removed, Some(block));
        }
        self.refs[b] += 1;
    }

    /// Drop a reference. A block nobody uses keeps its contents if it has a name.
    pub fn release(&mut self, block: u32) {
        let b = block as usize;
        assert!(
            self.refs[b] > 0,
            "block {block} released more often than taken"
        );
        self.refs[b] -= 1;
        if self.refs[b] == 0 {
            if self.names[b].is_some() {
                self.tick += 1;
                self.evict_key[b] = self.tick;
                self.evictable.insert(self.tick, block);
            } else {
                self.empty.push(block);
            }
        }
    }

    /// The cached block holding exactly these tokens after the prefix named `parent`.
    fn lookup(&self, hash: u64, tokens: &[u32]) -> Option<u32> {
        let &b = self.by_hash.get(&hash)?;
        let name = self.names[b as usize].as_ref()?;
        (name.tokens[..] == *tokens).then_some(b)
    }

    /// Name a full block so that later sequences can find it. A block already named, or a
    /// name already taken by another block, is left as it is.
    fn name(&mut self, block: u32, hash: u64, tokens: &[u32]) {
        let b = block as usize;
        if self.names[b].is_some() || self.by_hash.contains_key(&hash) {
            return;
        }
        let mut t = [0; BLOCK_TOKENS];
        t.copy_from_slice(tokens);
        self.names[b] = Some(BlockName { hash, tokens: t });
        self.by_hash.insert(hash, block);
    }

    /// References held on a block (tests and invariants).
    pub fn refs(&self, block: u32) -> u32 {
        self.refs[block as usize]
    }
}

/// The name of a block: its tokens chained with the name of the prefix before it.
fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// One sequence's place in the pool.
#[derive(Debug, Clone)]
pub struct SeqKv {
    blocks: Vec<u32>,
    len: usize,
    /// The most positions this sequence may hold: the model's context length.
    capacity: usize,
    /// Leading full blocks already named, and the name of the last of them.
    named: usize,
    last_hash: u64,
}

impl SeqKv {
    pub fn new(capacity: usize) -> Self {
        Self {
            blocks: Vec::new(),
            len: 0,
            capacity,
            named: 0,
            last_hash: 0,
        }
    }

    /// Positions stored (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions the blocks held now can take without allocating.
    pub fn reserved(&self) -> usize {
        self.blocks.len() * BLOCK_TOKENS
    }

    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Mark `n` positions written in every layer as stored.
    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.len <= self.reserved());
    }
}

/// Prefix-cache counters (tokens), as vLLM counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prompt tokens looked up in the cache.
    pub queries: u64,
    /// Of those, tokens found.
    pub hits: u64,
}

/// The memory of every block, and their bookkeeping.
pub struct KvPool {
    kind: KvCacheType,
    width: usize,
    head_dim: usize,
    block_bytes: usize,
    k: Vec<LayerRows>,
    v: Vec<LayerRows>,
    /// Per layer, the offset taken out of its stored keys.
    key_offsets: Vec<Option<Arc<KeyOffset>>>,
    alloc: BlockAllocator,
    pub stats: PrefixStats,
}

impl KvPool {
    /// An f16 pool of `num_blocks` blocks for a model with `n_layers` layers of `width` =
    /// `kv_heads * head_dim` values per position.
    pub fn new(n_layers: usize, width: usize, num_blocks: usize) -> Self {
        Self::with_layout(
            &KvLayout::new(KvCacheType::F16, n_layers, width, width),
            num_blocks,
        )
    }

    /// A pool of `num_blocks` blocks stored as `layout` says. Memory is zeroed lazily by
    /// the OS: pages are only resident once written.
    pub fn with_layout(layout: &KvLayout, num_blocks: usize) -> Self {
        let per_layer = num_blocks * BLOCK_TOKENS * layout.width;
        Self {
            kind: layout.kind,
            width: layout.width,
            head_dim: layout.head_dim,
            k: (0..layout.layers)
                .map(|l| LayerRows::new(layout.key_type(l), per_layer))
                .collect(),
            v: (0..layout.layers)
                .map(|_| LayerRows::new(layout.kind, per_layer))
                .collect(),
            key_offsets: (0..layout.layers)
                .map(|l| layout.key_offset(l).cloned())
                .collect(),
            alloc: BlockAllocator::new(num_blocks),
            stats: PrefixStats::default(),
            block_bytes: layout.block_bytes(),
        }
    }

    /// How this pool stores keys and values.
    pub fn cache_type(&self) -> KvCacheType {
        self.kind
    }

    /// Bytes one block takes over all layers, keys and values.
    pub fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    pub fn allocator(&self) -> &BlockAllocator {
        &self.alloc
    }

    pub fn num_blocks(&self) -> usize {
        self.alloc.num_blocks()
    }

    /// Share of the blocks referenced by some sequence, 0..=1.
    pub fn usage(&self) -> f64 {
        if self.num_blocks() == 0 {
            return 0.0;
        }
        self.alloc.used() as f64 / self.num_blocks() as f64
    }

    /// Blocks a sequence needs to hold `len` positions.
    pub fn blocks_for(len: usize) -> usize {
        len.div_ceil(BLOCK_TOKENS)
    }

    /// Make room for positions up to `len` (exclusive). False when the pool has too few
    /// free blocks (what was taken stays with the sequence) or `len` exceeds its capacity.
    pub fn reserve(&mut self, seq: &mut SeqKv, len: usize) -> bool {
        if len > seq.capacity {
            return false;
        }
        while seq.blocks.len() < Self::blocks_for(len) {
            match self.alloc.allocate() {
                Some(b) => seq.blocks.push(b),
                None => return false,
            }
        }
        true
    }

    /// Free blocks the pool could hand out now.
    pub fn available(&self) -> usize {
        self.alloc.available()
    }

    /// Give back every block of a sequence and empty it (a finished or preempted one).
    pub fn release(&mut self, seq: &mut SeqKv) {
        for b in seq.blocks.drain(..) {
            self.alloc.release(b);
        }
        seq.len = 0;
        seq.named = 0;
        seq.last_hash = 0;
    }

    /// Keep only the first `len` positions.
    pub fn truncate(&mut self, seq: &mut SeqKv, len: usize) {
        if len >= seq.len {
            return;
        }
        seq.len = len;
        // Named blocks keep describing what they hold; only the tail goes.
        let keep = Self::blocks_for(len);
        for b in seq.blocks.drain(keep..) {
            self.alloc.release(b);
        }
        if seq.named * BLOCK_TOKENS > len {
            // The partly kept block may be rewritten: unname the chain from there on.
            seq.named = len / BLOCK_TOKENS;
            seq.last_hash = 0;
            if seq.named > 0 {
                seq.named = 0; // re-derived on the next `register`
            }
        }
    }

    /// Give back blocks reserved past what `len` positions need (a reservation for draft
    /// tokens that fell short). Stored positions stay.
    pub fn unreserve(&mut self, seq: &mut SeqKv, len: usize) {
        let keep = Self::blocks_for(len.max(seq.len));
        for b in seq.blocks.drain(keep.min(seq.blocks.len())..) {
            self.alloc.release(b);
        }
    }

    /// Start an empty sequence from the cache: take the cached blocks that hold the
    /// longest prefix of `tokens` (whole blocks), leaving at least one token to compute.
    /// Returns the positions covered.
    pub fn attach_prefix(&mut self, seq: &mut SeqKv, tokens: &[u32]) -> usize {
        assert!(
            seq.blocks.is_empty(),
            "attach_prefix: the sequence already has blocks"
        );
        // The last token must be computed to get its logits.
        let usable = tokens.len().saturating_sub(1) / BLOCK_TOKENS;
        self.stats.queries += tokens.len() as u64;
        let mut hash = 0;
        for block_tokens in tokens.chunks_exact(BLOCK_TOKENS).take(usable) {
            let h = chain_hash(hash, block_tokens);
            match self.alloc.lookup(h, block_tokens) {
                Some(b) => {
                    self.alloc.retain(b);
                    seq.blocks.push(b);
                    hash = h;
                }
                None => break,
            }
        }
        seq.len = seq.blocks.len() * BLOCK_TOKENS;
        seq.named = seq.blocks.len();
        seq.last_hash = hash;
        self.stats.hits += seq.len as u64;
        seq.len
    }

    /// Name the sequence's blocks that have become full, so that others can share them.
    /// `tokens` are the sequence's tokens from position 0 (at least `seq.len()` of them).
    pub fn register(&mut self, seq: &mut SeqKv, tokens: &[u32]) {
        if seq.named == 0 {
            seq.last_hash = 0;
        }
        let full = seq.len.min(tokens.len()) / BLOCK_TOKENS;
        while seq.named < full {
            let i = seq.named;
            let block_tokens = &tokens[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS];
            let h = chain_hash(seq.last_hash, block_tokens);
            self.alloc.name(seq.blocks[i], h, block_tokens);
            seq.last_hash = h;
            seq.named += 1;
        }
    }

    /// Write keys and values of `n` new positions of one layer, from position `start`
    /// (`n * width` floats each). The blocks must be reserved.
    pub(crate) fn write(&mut self, layer: usize, seq: &SeqKv, start: usize, k: &[f32], v: &[f32]) {
        let w = self.width;
        let n = k.len() / w;
        assert!(
            start + n <= seq.reserved(),
            "KV write past the reserved blocks"
        );
        let offset_keys;
        let k = match &self.key_offsets[layer] {
            Some(offset) => {
                offset_keys = {
                    let mut k = k.to_vec();
                    offset.subtract(start, &mut k);
                    k
                };
                &offset_keys[..]
            }
            None => k,
        };
        for i in 0..n {
            let pos = start + i;
            let block = seq.blocks[pos / BLOCK_TOKENS] as usize;
            let at = (block * BLOCK_TOKENS + pos % BLOCK_TOKENS) * w;
            self.k[layer].write_rotated(at, &k[i * w..(i + 1) * w], self.head_dim);
            self.v[layer].write_rotated(at, &v[i * w..(i + 1) * w], self.head_dim);
        }
    }

    /// The key and value blocks of one layer covering positions `..len`, in order; the
    /// last block is cut to the positions it holds.
    /// The offset taken out of layer `layer`'s stored keys, for attention to add back.
    pub(crate) fn key_offset(&self, layer: usize) -> Option<&KeyOffset> {
        self.key_offsets[layer].as_deref()
    }

    pub(crate) fn layer_blocks(
        &self,
        layer: usize,
        seq: &SeqKv,
        len: usize,
    ) -> (Vec<KvRows<'_>>, Vec<KvRows<'_>>) {
        let w = self.width;
        let n = Self::blocks_for(len);
        let mut ks = Vec::with_capacity(n);
        let mut vs = Vec::with_capacity(n);
        for (i, &b) in seq.blocks[..n].iter().enumerate() {
            let held = (len - i * BLOCK_TOKENS).min(BLOCK_TOKENS);
            let at = b as usize * BLOCK_TOKENS * w;
            ks.push(self.k[layer].rows(at, held * w));
            vs.push(self.v[layer].rows(at, held * w));
        }
        (ks, vs)
    }
}

/// One sequence with a pool of its own: the plain forward of reference tests and benches.
pub struct KvCache {
    pub(crate) pool: KvPool,
    pub(crate) seq: SeqKv,
}

impl KvCache {
    /// Room for `capacity` positions (memory becomes resident as it is written).
    pub fn new(n_layers: usize, width: usize, capacity: usize) -> Self {
        Self::with_layout(
            &KvLayout::new(KvCacheType::F16, n_layers, width, width),
            capacity,
        )
    }

    /// The same, stored as `layout` says.
    pub fn with_layout(layout: &KvLayout, capacity: usize) -> Self {
        Self {
            pool: KvPool::with_layout(layout, KvPool::blocks_for(capacity)),
            seq: SeqKv::new(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.seq.capacity()
    }

    /// Drop every position from `len` on (e.g. to re-run a prompt's tail).
    pub fn truncate(&mut self, len: usize) {
        self.pool.truncate(&mut self.seq, len);
    }

    /// Bytes of keys and values written so far (whole blocks).
    pub fn size_bytes(&self) -> usize {
        self.seq.blocks.len() * self.pool.block_bytes
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn tokens(seed: u32, n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| seed * 1000 + i).collect()
    }

    #[test]
    fn allocate_release_and_reuse() {
        let mut a = BlockAllocator::new(3);
        let b: Vec<u32> = (0..3).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(a.allocate(), None);
        assert_eq!(a.used(), 3);
        a.release(b[1]);
        assert_eq!(a.allocate(), Some(b[1]));
        for &x in &b {
            a.release(x);
        }
        assert_eq!((a.used(), a.available()), (0, 3));
    }

    #[test]
    #[should_panic(expected = "released more often")]
    fn double_release_is_caught() {
        let mut a = BlockAllocator::new(1);
        let b = a.allocate().unwrap();
        a.release(b);
        a.release(b);
    }

    #[test]
    fn prefix_blocks_are_shared_and_evicted_lru() {
        let mut pool = KvPool::new(1, 2, 8);
        let prompt = tokens(1, 40); // 2 full blocks + 8
        let mut a = SeqKv::new(1000);
        assert_eq!(pool.attach_prefix(&mut a, &prompt), 0);
        assert!(pool.reserve(&mut a, 40));
        a.commit(40);
        pool.register(&mut a, &prompt);
        // Same prompt: both full blocks come from the cache, shared.
        let mut b = SeqKv::new(1000);
        assert_eq!(pool.attach_prefix(&mut b, &prompt), 32);
        assert_eq!(&b.blocks()[..2], &a.blocks()[..2]);
        assert_eq!(pool.allocator().refs(a.blocks()[0]), 2);
        // A prompt of exactly two blocks keeps its last token to compute: one block.
        let mut c = SeqKv::new(1000);
        assert_eq!(pool.attach_prefix(&mut c, &prompt[..32]), 16);
        // Another prompt sharing only the first block.
        let mut other = prompt.clone();
        other[20] = 7;
        let mut d = SeqKv::new(1000);
        assert_eq!(pool.attach_prefix(&mut d, &other), 16);
        for s in [&mut a, &mut b, &mut c, &mut d] {
            pool.release(s);
        }
        assert_eq!(pool.allocator().used(), 0);
        // Cached blocks survive release until their memory is needed...
        let mut e = SeqKv::new(1000);
        assert_eq!(pool.attach_prefix(&mut e, &prompt), 32);
        pool.release(&mut e);
        // ...and are evicted when it is: 8 fresh blocks take every block.
        let mut f = SeqKv::new(1000);
        assert!(pool.reserve(&mut f, 8 * BLOCK_TOKENS));
        assert!(!pool.reserve(&mut f, 9 * BLOCK_TOKENS));
        pool.release(&mut f);
        let mut g = SeqKv::new(1000);
        assert_eq!(pool.attach_prefix(&mut g, &prompt), 0);
        assert!(pool.stats.hits > 0 && pool.stats.queries >= pool.stats.hits);
    }

    #[test]
    fn reads_and_writes_go_through_the_block_table() {
        let mut pool = KvPool::new(2, 3, 4);
        let mut s = SeqKv::new(100);
        assert!(pool.reserve(&mut s, 20));
        let k: Vec<f32> = (0..20 * 3).map(|i| i as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        pool.write(1, &s, 0, &k[..30], &v[..30]);
        pool.write(1, &s, 10, &k[30..], &v[30..]);
        s.commit(20);
        let (ks, vs) = pool.layer_blocks(1, &s, 20);
        assert_eq!((ks.len(), ks[0].len(), ks[1].len()), (2, 48, 12));
        assert_eq!(widened(&ks), k);
        assert_eq!(widened(&vs[1..])[11], -59.0);
        assert!(!pool.reserve(&mut s, 101), "past the capacity");
    }

    fn widened(blocks: &[KvRows<'_>]) -> Vec<f32> {
        let mut all = Vec::new();
        for b in blocks {
            let mut x = vec![0f32; b.len()];
            b.widen(0, &mut x);
            all.extend(x);
        }
        all
    }

    /// A q8_0 pool takes 34 bytes per 32 values where f16 takes 64 (a block budget buys
    /// 1.88x the positions), q4_0 18; what is written reads back within the quantization
    /// step, through the same block tables; prefix sharing does not depend on the type.
    #[test]
    fn quantized_pools_take_fewer_bytes_per_token_and_read_back() {
        // Qwen2.5-Coder-1.5B: 28 layers, 2 KV heads of 128.
        let layers = 28;
        let bytes = |kind| KvLayout::new(kind, layers, 256, 128).block_bytes();
        let f16_bytes = bytes(KvCacheType::F16);
        let q8_bytes = bytes(KvCacheType::Q8_0);
        let q4_bytes = bytes(KvCacheType::Q4_0);
        assert_eq!(
            f16_bytes / BLOCK_TOKENS,
            28 * 2 * 256 * 2,
            "f16 bytes per token"
        );
        assert_eq!(
            q8_bytes * 64,
            f16_bytes * 34,
            "q8_0: 34 bytes per 32 values"
        );
        assert_eq!(
            q4_bytes * 64,
            f16_bytes * 18,
            "q4_0: 18 bytes per 32 values"
        );
        let budget = 1 << 30;
        assert!(budget / q8_bytes * 100 >= budget / f16_bytes * 188);

        for kind in [KvCacheType::Q8_0, KvCacheType::Q4_0] {
            let mut pool = KvPool::with_layout(&KvLayout::new(kind, 2, 64, 32), 4);
            assert_eq!(pool.block_bytes(), 2 * 2 * kind.bytes(16 * 64));
            assert_eq!(pool.cache_type(), kind);
            let mut s = SeqKv::new(100);
            assert!(pool.reserve(&mut s, 20));
            let k: Vec<f32> = (0..20 * 64)
                .map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0)
                .collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            pool.write(1, &s, 0, &k[..7 * 64], &v[..7 * 64]);
            pool.write(1, &s, 7, &k[7 * 64..], &v[7 * 64..]);
            s.commit(20);
            let (ks, vs) = pool.layer_blocks(1, &s, 20);
            assert_eq!((ks.len(), ks[0].len(), ks[1].len()), (2, 16 * 64, 4 * 64));
            // Stored rotated per head of 32 (`kernels::kv_rows`).
            let rotated = |x: &[f32]| {
                let mut x = x.to_vec();
                x.chunks_exact_mut(32).for_each(rotate);
                x
            };
            for (got, want) in [(widened(&ks), &rotated(&k)), (widened(&vs), &rotated(&v))] {
                for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                    let block = &want[i / QK * QK..][..QK];
                    let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                    // Half a step (q8_0); q4_0 clips the sign opposite its largest value at
                    // 7 steps, so up to a whole step there.
                    let bound = match kind {
                        KvCacheType::Q8_0 => 0.51 * amax / 127.0,
                        _ => 1.01 * amax / 8.0,
                    };
                    assert!((g - w).abs() <= bound, "{kind} value {i}: {g} for {w}");
                }
            }

            let prompt = tokens(3, 40);
            let mut a = SeqKv::new(1000);
            assert!(
                pool.reserve(&mut a, 40) || {
                    pool.release(&mut s);
                    pool.reserve(&mut a, 40)
                }
            );
            a.commit(40);
            pool.register(&mut a, &prompt);
            let mut b = SeqKv::new(1000);
            assert_eq!(
                pool.attach_prefix(&mut b, &prompt),
                32,
                "{kind}: prefix shared"
            );
        }
    }

    /// Layers whose keys stay f16 are stored and counted as such; their values, and every
    /// other layer, as the cache's type.
    #[test]
    fn f16_key_layers_are_stored_and_counted_in_f16() {
        let mut layout = KvLayout::new(KvCacheType::Q8_0, 2, 64, 32);
        let plain = layout.block_bytes();
        layout.f16_key_layers = vec![true, false];
        assert_eq!(
            layout.block_bytes(),
            plain + KvCacheType::F16.bytes(16 * 64) - KvCacheType::Q8_0.bytes(16 * 64)
        );
        let mut pool = KvPool::with_layout(&layout, 2);
        let mut s = SeqKv::new(32);
        assert!(pool.reserve(&mut s, 3));
        let k: Vec<f32> = (0..3 * 64).map(|i| 100.0 + i as f32 / 8.0).collect();
        for layer in 0..2 {
            pool.write(layer, &s, 0, &k, &k);
        }
        s.commit(3);
        let (k0, v0) = pool.layer_blocks(0, &s, 3);
        assert!(matches!(k0[0], KvRows::F16(_)) && matches!(v0[0], KvRows::Q8_0 { .. }));
        assert_eq!(widened(&k0), k, "f16 keys hold these values exactly");
        let (k1, _) = pool.layer_blocks(1, &s, 3);
        assert!(matches!(k1[0], KvRows::Q8_0 { .. }));
    }

    #[test]
    fn cache_types_parse_by_name() {
        for kind in KvCacheType::ALL {
            assert_eq!(kind.name().parse::<KvCacheType>().unwrap(), kind);
        }
        assert_eq!("Q8_0".parse::<KvCacheType>().unwrap(), KvCacheType::Q8_0);
        let err = "q5_1".parse::<KvCacheType>().unwrap_err().to_string();
        assert!(err.contains("f16, q8_0 or q4_0"), "{err}");
        assert!(KvCacheType::Q8_0.check_head_dim(40).is_err());
        assert!(KvCacheType::F16.check_head_dim(40).is_ok());
        assert!(KvCacheType::Q8_0.check_head_dim(128).is_ok());
    }

    /// 10,000 random operations: allocate, extend, share prefixes, release, evict. The
    /// reference counts always match the sequences alive, no block is both free and used,
    /// and when every sequence is gone every block is free again.
    #[test]
    fn no_leak_after_random_operations() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut pool = KvPool::new(1, 1, 64);
        let prompts: Vec<Vec<u32>> = (0..6).map(|p| tokens(p, 16 * 6 + p as usize)).collect();
        let mut live: Vec<(SeqKv, Vec<u32>)> = Vec::new();
        for _ in 0..10_000 {
            match rng.random_range(0..4) {
                0 => {
                    let mut toks = prompts[rng.random_range(0..prompts.len())].clone();
                    let cut = rng.random_range(1..toks.len());
                    toks.truncate(cut);
                    let mut s = SeqKv::new(10_000);
                    let cached = pool.attach_prefix(&mut s, &toks);
                    if pool.reserve(&mut s, toks.len()) {
                        s.commit(toks.len() - cached);
                        pool.register(&mut s, &toks);
                        live.push((s, toks));
                    } else {
                        pool.release(&mut s);
                    }
                }
                1 if !live.is_empty() => {
                    let i = rng.random_range(0..live.len());
                    let (s, toks) = &mut live[i];
                    let extra = rng.random_range(1..20);
                    if pool.reserve(s, s.len() + extra) {
                        toks.extend((0..extra as u32).map(|x| 900_000 + x));
                        s.commit(extra);
                        pool.register(s, toks);
                    }
                }
                2 | 3 if !live.is_empty() => {
                    let i = rng.random_range(0..live.len());
                    let (mut s, _) = live.swap_remove(i);
                    pool.release(&mut s);
                }
                _ => {}
            }
            let mut refs = vec![0u32; pool.num_blocks()];
            for (s, _) in &live {
                for &b in s.blocks() {
                    refs[b as usize] += 1;
                }
            }
            for (b, &r) in refs.iter().enumerate() {
                assert_eq!(pool.allocator().refs(b as u32), r, "block {b}");
            }
            let used = refs.iter().filter(|&&r| r > 0).count();
            assert_eq!(pool.allocator().used(), used);
        }
        for (mut s, _) in live.drain(..) {
            pool.release(&mut s);
        }
        assert_eq!(pool.allocator().available(), pool.num_blocks());
        assert!(pool.stats.hits > 0, "the random prompts shared prefixes");
    }
}
