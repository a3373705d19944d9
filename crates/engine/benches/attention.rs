//! Attention alone at long contexts: one prefill chunk of 512 query rows (the last chunk of
//! a prompt of CONTEXT tokens) and one decode row, on Qwen2.5-Coder-1.5B's shape (12 query
//! heads, 2 KV heads of 128), KV cache in f16 and q8_0, and q8_0 with keys stored less a
//! large bias's rotation (`q8_0+b`: Qwen2's first layers, `kernels::key_offset`). Prints the time per call and per
//! (query head, key) pair: a kernel without a cliff keeps the second roughly flat as the
//! context grows.
//!
//! `cargo bench -p verre-engine --bench attention [-- --contexts 512,4096,16384]
//! [--threads 2] [--evict-mb 512]` (add `--profile dev` to build without a release tree: the engine is
//! optimised in the dev profile too).

use std::time::Instant;

use half::f16;
use verre_engine::kernels::attention::{AttentionShape, KvRows, SeqAttention, attention};
use verre_engine::kernels::key_offset::KeyOffset;
use verre_engine::kernels::kv_rows::{QK, quantize_q8_0};

const BLOCK: usize = 16;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Touch every cache line of `buf` (a write and a read), outside the timed calls.
fn evict(buf: &mut [u8]) {
    let mut sum = 0u8;
    for line in buf.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
        sum = sum.wrapping_add(line[0]);
    }
    std::hint::black_box(sum);
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let contexts: Vec<usize> = arg("--contexts")
        .unwrap_or_else(|| "512,4096,16384".into())
        .split(',')
        .map(|s| s.trim().parse().expect("--contexts: numbers"))
        .collect();
    let threads: usize = arg("--threads").map_or(2, |t| t.parse().expect("--threads"));
    // Between calls, this many MB are written and read, as a model's weights pass through
    // the caches between two layers' attention: a call then finds its keys, values and
    // scratch where a real forward finds them, not in a cache the previous call warmed.
    let evict_mb: usize = arg("--evict-mb").map_or(512, |m| m.parse().expect("--evict-mb"));
    let mut flush = vec![0u8; evict_mb << 20];
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    let shape = AttentionShape {
        n_head: 12,
        n_kv_head: 2,
        head_dim: 128,
        scale: 1.0 / 128f32.sqrt(),
        window: None,
    };
    let kv_dim = 2 * 128;
    println!("threads {threads}; 12 query heads, 2 KV heads of 128");
    println!(
        "{:>8} {:>6} {:>6} {:>12} {:>16}",
        "context", "rows", "kv", "ms/call", "ns/(head·key)"
    );
    for &len in &contexts {
        let k32: Vec<f32> = random(len * kv_dim, 1).iter().map(|x| 3.0 * x).collect();
        let v32 = random(len * kv_dim, 2);
        let k16: Vec<f16> = k32.iter().map(|&x| f16::from_f32(x)).collect();
        let v16: Vec<f16> = v32.iter().map(|&x| f16::from_f32(x)).collect();
        let (mut k8, mut v8) = (vec![0i8; k32.len()], vec![0i8; v32.len()]);
        let (mut kd, mut vd) = (
            vec![f16::ZERO; k32.len() / QK],
            vec![f16::ZERO; v32.len() / QK],
        );
        quantize_q8_0(&k32, &mut k8, &mut kd);
        quantize_q8_0(&v32, &mut v8, &mut vd);
        let per_block = BLOCK * kv_dim;
        fn q8_blocks<'a>(q: &'a [i8], d: &'a [f16], per_block: usize) -> Vec<KvRows<'a>> {
            q.chunks(per_block)
                .zip(d.chunks(per_block / QK))
                .map(|(quants, scales)| KvRows::Q8_0 { quants, scales })
                .collect()
        }
        fn f16_blocks(x: &[f16], per_block: usize) -> Vec<KvRows<'_>> {
            x.chunks(per_block).map(KvRows::F16).collect()
        }
        let caches = [
            (
                "f16",
                f16_blocks(&k16, per_block),
                f16_blocks(&v16, per_block),
            ),
            (
                "q8_0",
                q8_blocks(&k8, &kd, per_block),
                q8_blocks(&v8, &vd, per_block),
            ),
        ];
        // A bias as large as Qwen2.5's first layer's, on its last pairs; NeoX pairs, base 1e6.
        let bias: Vec<f32> = (0..kv_dim)
            .map(|i| if i % 64 >= 58 { 300.0 } else { 2.0 })
            .collect();
        let pairs: Vec<(usize, usize)> = (0..64).map(|i| (i, i + 64)).collect();
        let speeds: Vec<f64> = (0..64).map(|i| 1e6f64.powf(-(i as f64) / 64.0)).collect();
        let offset = KeyOffset::new(&bias, 128, &pairs, &speeds, 1.0);
        for rows in [512.min(len), 1] {
            let q = random(rows * 12 * 128, 3);
            let mut out = vec![0f32; q.len()];
            let runs = caches
                .iter()
                .map(|(name, kb, vb)| (*name, kb, vb, None))
                .chain([("q8_0+b", &caches[1].1, &caches[1].2, Some(&offset))]);
            for (name, kb, vb, key_offset) in runs {
                let seq = [SeqAttention {
                    k: kb,
                    v: vb,
                    block_len: BLOCK,
                    len,
                    rows: 0..rows,
                    key_offset,
                }];
                attention(&shape, &seq, &q, &mut out);
                let reps = (20_000_000 / (rows * len)).clamp(1, 50);
                let mut secs = 0.0;
                for _ in 0..reps {
                    evict(&mut flush);
                    let t = Instant::now();
                    attention(&shape, &seq, &q, &mut out);
                    secs += t.elapsed().as_secs_f64();
                }
                let secs = secs / reps as f64;
                // Causal: row i of the chunk sees len - rows + i + 1 keys.
                let pairs = 12.0 * (rows as f64) * (len as f64 - rows as f64 / 2.0);
                println!(
                    "{len:>8} {rows:>6} {name:>6} {:>12.2} {:>16.3}",
                    secs * 1e3,
                    secs * 1e9 / pairs
                );
            }
        }
    }
}
