//! Per-sequence key/value cache.
//!
//! Keys and values are stored as f16, as llama.cpp stores them, position-major per layer:
//! `[position][kv_head * head_dim]`. Memory grows with the sequence, up to the model's
//! context length. (The paged block pool with prefix sharing replaces this per-sequence
//! layout in the batching work; the forward already reads the cache through this type only.)

use half::f16;

pub struct KvCache {
    layers: Vec<LayerKv>,
    /// Floats per position per layer: kv_heads * head_dim.
    width: usize,
    len: usize,
    capacity: usize,
}

struct LayerKv {
    k: Vec<f16>,
    v: Vec<f16>,
}

impl KvCache {
    pub fn new(n_layers: usize, width: usize, capacity: usize) -> Self {
        let layers = (0..n_layers)
            .map(|_| LayerKv {
                k: Vec::new(),
                v: Vec::new(),
            })
            .collect();
        Self {
            layers,
            width,
            len: 0,
            capacity,
        }
    }

    /// Positions stored (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most positions this cache may hold: the model's context length.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Drop every position from `len` on (e.g. to re-run a prompt's tail).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            for l in &mut self.layers {
                l.k.truncate(len * self.width);
                l.v.truncate(len * self.width);
            }
            self.len = len;
        }
    }

    /// Bytes held by keys and values.
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.k.len() + l.v.len()) * 2)
            .sum()
    }

    /// Append keys and values for `n` new positions of one layer (`n * width` floats each).
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let l = &mut self.layers[layer];
        l.k.extend(k.iter().map(|&x| f16::from_f32(x)));
        l.v.extend(v.iter().map(|&x| f16::from_f32(x)));
    }

    /// Mark `n` positions appended in every layer as stored.
    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
        debug_assert!(
            self.layers
                .iter()
                .all(|l| l.k.len() == self.len * self.width)
        );
    }

    /// Keys and values of one layer for all positions appended so far (committed or not).
    pub(crate) fn layer(&self, layer: usize) -> (&[f16], &[f16]) {
        let l = &self.layers[layer];
        (&l.k, &l.v)
    }
}
