//! Quantized matrix products, verre's kernels against candle's `QMatMul`, on SmolLM2-135M's
//! shapes: one activation row (decode) and 512 (a prompt).
//!
//! `cargo bench -p verre-engine --bench matmul [-- --threads 1,2] [--types Q4_1,Q8_0,Q4_K,...]
//! [--m 1,512] [--shapes 576x1536,...] [--no-candle]`. Each implementation and thread count
//! runs in a child process of its own: both thread pools are sized once per process, and
//! candle's workers spin for a while after each product, which would steal a core from the
//! next measurement. Times are medians of several samples (`VERRE_BENCH_STAT=min`: the
//! fastest, steadier on a busy machine). Row `1c` is decoding as it happens: the weights
//! come from memory, not from a warm cache.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use verre_engine::kernels::{self, QuantMatrix, QuantType, Scratch};

/// (k, n) of SmolLM2-135M's projections: attention in/out, K/V, MLP up, MLP down, output.
const SHAPES: [(usize, usize); 5] = [
    (576, 576),
    (576, 192),
    (576, 1536),
    (1536, 576),
    (576, 49152),
];

/// Weights streamed per cold measurement: three times this machine's 32 MiB L3.
const COLD_BYTES: usize = 96 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Verre,
    Candle,
}

struct Options {
    threads: Vec<usize>,
    types: Vec<QuantType>,
    ms: Vec<usize>,
    shapes: Vec<(usize, usize)>,
    candle: bool,
    child: Option<Impl>,
}

fn parse_list<T>(s: &str, parse: impl Fn(&str) -> T) -> Vec<T> {
    s.split(',').map(|v| parse(v.trim())).collect()
}

fn parse_type(s: &str) -> QuantType {
    match s {
        "Q4_0" => QuantType::Q4_0,
        "Q4_1" => QuantType::Q4_1,
        "Q5_0" => QuantType::Q5_0,
        "Q5_1" => QuantType::Q5_1,
        "Q8_0" => QuantType::Q8_0,
        "Q4_K" => QuantType::Q4K,
        "Q5_K" => QuantType::Q5K,
        "Q6_K" => QuantType::Q6K,
        other => panic!("unknown type {other}"),
    }
}

/// `KxN`, as in `576x1536`.
fn parse_shape(s: &str) -> (usize, usize) {
    let (k, n) = s.split_once('x').expect("--shapes KxN,...");
    (k.parse().expect("K"), n.parse().expect("N"))
}

fn options() -> Options {
    let mut o = Options {
        threads: vec![1, 2],
        types: vec![
            QuantType::Q4_0,
            QuantType::Q4_1,
            QuantType::Q5_0,
            QuantType::Q8_0,
            QuantType::Q4K,
            QuantType::Q6K,
        ],
        ms: vec![1, 512],
        shapes: SHAPES.to_vec(),
        candle: true,
        child: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).map(String::as_str).unwrap_or("");
        match args[i].as_str() {
            "--threads" => o.threads = parse_list(value, |v| v.parse().expect("--threads")),
            "--types" => o.types = parse_list(value, parse_type),
            "--m" => o.ms = parse_list(value, |v| v.parse().expect("--m")),
            "--shapes" => o.shapes = parse_list(value, parse_shape),
            "--child" => {
                o.child = Some(if value == "candle" {
                    Impl::Candle
                } else {
                    Impl::Verre
                })
            }
            "--no-candle" => {
                o.candle = false;
                i += 1;
                continue;
            }
            // `cargo bench` passes `--bench`; anything else unknown is ignored likewise.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn main() {
    let o = options();
    match o.child {
        // Called from a thread of the pool, as the engine's forward pass runs: the tasks of
        // a product go to the other workers without a round trip through the pool's queue.
        Some(Impl::Verre) if std::env::var("VERRE_BENCH_OUTSIDE_POOL").is_err() => {
            rayon::scope(|_| measure(&o, Impl::Verre))
        }
        Some(which) => measure(&o, which),
        None => compare(&o),
    }
}

/// Run the children and print one table.
fn compare(o: &Options) {
    let stat = match std::env::var("VERRE_BENCH_STAT") {
        Ok(s) if s == "min" => "fastest",
        _ => "median",
    };
    println!(
        "verre kernels: {:?}; candle 0.11.1 QMatMul; {stat} of samples; GFLOP/s = 2*m*n*k/time",
        kernels::isa()
    );
    println!("m = 1c: one row against weights streamed from memory (copies beyond the L3)");
    println!(
        "{:<5} {:>11} {:>4} {:>3} | {:>10} {:>8} | {:>10} {:>8} | {:>6}",
        "type", "k->n", "m", "thr", "verre ms", "GFLOP/s", "candle ms", "GFLOP/s", "ratio"
    );
    let exe = std::env::current_exe().expect("the bench's own path");
    let join = |v: Vec<String>| v.join(",");
    let shapes = join(o.shapes.iter().map(|(k, n)| format!("{k}x{n}")).collect());
    let types = join(o.types.iter().map(|q| q.to_string()).collect());
    let ms = join(o.ms.iter().map(|m| m.to_string()).collect());
    for &t in &o.threads {
        let run = |which: &str| -> HashMap<String, f64> {
            let output = Command::new(&exe)
                .args(["--child", which, "--threads", &t.to_string()])
                .args(["--types", &types, "--m", &ms, "--shapes", &shapes])
                .env("RAYON_NUM_THREADS", t.to_string())
                .env("CANDLE_NUM_THREADS", t.to_string())
                .output()
                .expect("running a bench child");
            assert!(
                output.status.success(),
                "the {which} child for {t} threads failed"
            );
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter_map(|line| line.rsplit_once(' '))
                .map(|(key, secs)| (key.to_string(), secs.parse().unwrap_or(f64::NAN)))
                .collect()
        };
        let ours = run("verre");
        let theirs = if o.candle {
            run("candle")
        } else {
            HashMap::new()
        };
        for &qtype in &o.types {
            for &(k, n) in &o.shapes {
                if !k.is_multiple_of(qtype.block_len()) {
                    // llama.cpp's quantizer stores such a tensor in a fallback type (Q4_K ->
                    // Q5_0, Q6_K -> Q8_0), which is measured under that type.
                    println!(
                        "{:<5} {:>11}  -- k is not a multiple of {}",
                        qtype.to_string(),
                        format!("{k}->{n}"),
                        qtype.block_len()
                    );
                    continue;
                }
                for &m in &o.ms {
                    let labels = if m == 1 { vec!["1", "1c"] } else { vec![""] };
                    for label in labels {
                        let label = if label.is_empty() {
                            m.to_string()
                        } else {
                            label.into()
                        };
                        let key = format!("{qtype} {k} {n} {label}");
                        let verre = ours.get(&key).copied().unwrap_or(f64::NAN);
                        let candle = theirs.get(&key).copied().unwrap_or(f64::NAN);
                        let gflop = 2.0 * (m * n * k) as f64 / 1e9;
                        println!(
                            "{:<5} {:>11} {:>4} {:>3} | {:>10.3} {:>8.1} | {:>10.3} {:>8.1} | {:>5.2}x",
                            qtype.to_string(),
                            format!("{k}->{n}"),
                            label,
                            t,
                            verre * 1e3,
                            gflop / verre,
                            candle * 1e3,
                            gflop / candle,
                            candle / verre
                        );
                    }
                }
            }
        }
    }
}

fn ggml_dtype(q: QuantType) -> GgmlDType {
    match q {
        QuantType::F32 => GgmlDType::F32,
        QuantType::F16 => GgmlDType::F16,
        QuantType::Q4_0 => GgmlDType::Q4_0,
        QuantType::Q4_1 => GgmlDType::Q4_1,
        QuantType::Q5_0 => GgmlDType::Q5_0,
        QuantType::Q5_1 => GgmlDType::Q5_1,
        QuantType::Q8_0 => GgmlDType::Q8_0,
        QuantType::Q4K => GgmlDType::Q4K,
        QuantType::Q5K => GgmlDType::Q5K,
        QuantType::Q6K => GgmlDType::Q6K,
    }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// Seconds per call of `f`: the median (or fastest) of samples of at least ~30 ms each.
fn time_per_call(mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    f();
    let once = start.elapsed().max(Duration::from_micros(1));
    let calls = ((0.03 / once.as_secs_f64()).ceil() as usize).max(1);
    let samples = if once > Duration::from_millis(300) {
        3
    } else {
        7
    };
    let mut times: Vec<f64> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                f();
            }
            start.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    if std::env::var("VERRE_BENCH_STAT").is_ok_and(|s| s == "min") {
        return times[0];
    }
    times[times.len() / 2]
}

/// One implementation's products, as lines `TYPE K N M SECONDS`.
fn measure(o: &Options, which: Impl) {
    for &qtype in &o.types {
        for &(k, n) in &o.shapes {
            if !k.is_multiple_of(qtype.block_len()) {
                continue;
            }
            let values = random(n * k, (k * 31 + n) as u64);
            let w = Tensor::from_slice(&values, (n, k), &Device::Cpu).unwrap();
            let qt = QTensor::quantize(&w, ggml_dtype(qtype)).unwrap();
            let bytes = qt.data().unwrap().into_owned();
            for &m in &o.ms {
                let x = random(m * k, 7);
                // Decoding streams every weight from memory once per token: the cold row
                // rotates over copies of the weights that together overflow the L3.
                let copies = if m == 1 {
                    (COLD_BYTES / bytes.len()).max(2)
                } else {
                    1
                };
                let runs: &[(&str, usize)] = if m == 1 {
                    &[("1", 1), ("1c", copies)]
                } else {
                    &[("", 1)]
                };
                for &(label, copies) in runs {
                    let label = if label.is_empty() {
                        m.to_string()
                    } else {
                        label.into()
                    };
                    let secs = match which {
                        Impl::Verre => {
                            let mats: Vec<QuantMatrix> = (0..copies)
                                .map(|_| QuantMatrix::from_vec(bytes.clone(), qtype, n, k).unwrap())
                                .collect();
                            let mut out = vec![0f32; m * n];
                            let mut scratch = Scratch::new();
                            let mut next = 0;
                            time_per_call(|| {
                                next = (next + 1) % copies;
                                mats[next].matmul(&x, m, &mut out, &mut scratch)
                            })
                        }
                        Impl::Candle => {
                            let mats: Vec<QMatMul> = (0..copies)
                                .map(|_| {
                                    let dims = vec![n, k];
                                    let q = qtensor_from_ggml(
                                        ggml_dtype(qtype),
                                        &bytes,
                                        dims,
                                        &Device::Cpu,
                                    );
                                    QMatMul::from_qtensor(q.unwrap()).unwrap()
                                })
                                .collect();
                            let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
                            let mut next = 0;
                            time_per_call(|| {
                                next = (next + 1) % copies;
                                std::hint::black_box(mats[next].forward(&xt).unwrap());
                            })
                        }
                    };
                    println!("{qtype} {k} {n} {label} {secs}");
                }
            }
        }
    }
}
