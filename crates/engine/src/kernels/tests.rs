use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;

use super::acts::{Lane, QK_K, QK8, quantize_q8_row, quantize_q8k_row};
use super::*;

const ALL: [QuantType; 10] = [
    QuantType::F32,
    QuantType::F16,
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q8_0,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
];

fn ggml_dtype(qtype: QuantType) -> GgmlDType {
    match qtype {
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

/// Uniform values in [-1, 1) from a fixed seed (xorshift64*).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let bits = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            bits as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// `values` (rows x cols) quantized by candle, and its ggml-layout bytes.
fn quantize(qtype: QuantType, values: &[f32], rows: usize, cols: usize) -> (QTensor, Vec<u8>) {
    let t = Tensor::from_slice(values, (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, ggml_dtype(qtype)).unwrap();
    let bytes = q.data().unwrap().into_owned();
    (q, bytes)
}

fn ggml_bytes(qtype: QuantType, values: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    quantize(qtype, values, rows, cols).1
}

fn random_matrix(qtype: QuantType, rows: usize, cols: usize, seed: u64) -> QuantMatrix {
    let values = random(rows * cols, seed);
    QuantMatrix::from_vec(ggml_bytes(qtype, &values, rows, cols), qtype, rows, cols).unwrap()
}

/// The kernel sets this machine can run.
fn isas() -> Vec<Isa> {
    match isa() {
        Isa::Scalar => vec![Isa::Scalar],
        Isa::Avx2 => vec![Isa::Scalar, Isa::Avx2],
        Isa::Avx2Vnni => vec![Isa::Scalar, Isa::Avx2, Isa::Avx2Vnni],
        Isa::Avx512Vnni => {
            let mut v = vec![Isa::Scalar, Isa::Avx2];
            if Isa::Avx512Vnni.vex() == Isa::Avx2Vnni {
                v.push(Isa::Avx2Vnni);
            }
            v.push(Isa::Avx512Vnni);
            v
        }
    }
}

/// `w @ x` with the kernels of `isa`; for AVX-512 the matrix is packed first.
fn run(w: &QuantMatrix, isa: Isa, x: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; m * w.rows()];
    let w = w.clone().pack_for(isa);
    w.matmul_with(isa, x, m, &mut out, &mut Scratch::new());
    out
}

/// Columns that every type's block size divides, and that are not a power of two.
const COLS: usize = 768;

/// Column counts to try for `qtype`: COLS and one that leaves a partial group of blocks
/// (576 = 18 blocks of 32; 1280 = 5 super-blocks of 256).
fn col_counts(qtype: QuantType) -> [usize; 2] {
    if qtype.block_len() <= 32 {
        [COLS, 576]
    } else {
        [COLS, 1280]
    }
}

#[test]
fn simd_matches_scalar() {
    for isa in isas().into_iter().skip(1) {
        for qtype in ALL {
            for cols in col_counts(qtype) {
                let w = random_matrix(qtype, 37, cols, 1);
                for m in [1, 3, 4, 9] {
                    let x = random(m * cols, 2 + m as u64);
                    let simd = run(&w, isa, &x, m);
                    let reference = run(&w, Isa::Scalar, &x, m);
                    let scale =
                        reference.iter().map(|v| v.abs()).sum::<f32>() / reference.len() as f32;
                    for (i, (s, r)) in simd.iter().zip(&reference).enumerate() {
                        let tolerance = 1e-4 * r.abs().max(scale);
                        assert!(
                            (s - r).abs() <= tolerance,
                            "{qtype} {isa:?} k={cols} m={m} element {i}: simd {s} scalar {r}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn vnni_matches_avx2_exactly() {
    if isa().vex() != Isa::Avx2Vnni {
        return;
    }
    for qtype in ALL {
        let w = random_matrix(qtype, 19, COLS, 5);
        let x = random(5 * COLS, 6);
        let vnni = run(&w, Isa::Avx2Vnni, &x, 5);
        let avx2 = run(&w, Isa::Avx2, &x, 5);
        assert!(
            vnni.iter()
                .zip(&avx2)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{qtype}"
        );
    }
}

#[test]
fn activation_quantizers_match_scalar() {
    if isa() == Isa::Scalar {
        return;
    }
    let k = 4 * QK_K;
    let mut x = random(k, 7);
    // An all-zero block, exact ties and a repeated extreme of both signs.
    x[..QK_K].fill(0.0);
    x[QK_K] = 2.54;
    x[QK_K + 1] = 0.01;
    x[QK_K + 2] = -2.54;
    x[2 * QK_K + 5] = -3.0;
    x[2 * QK_K + 9] = 3.0;
    x[2 * QK_K + 10] = 1.5;
    for i in 0..8 {
        x[3 * QK_K + i] = i as f32 * 0.5;
    }
    x[3 * QK_K + 8] = 127.0 / 2.0;

    let nb = k / QK8;
    let q8 = |isa| {
        let (mut qs, mut d, mut s) = (vec![Lane::default(); nb], vec![0.0; nb], vec![0.0; nb]);
        quantize_q8_row(isa, &x, &mut qs, &mut d, &mut s);
        (qs.iter().map(|l| l.0).collect::<Vec<_>>(), d, s)
    };
    assert_eq!(q8(isa()), q8(Isa::Scalar));

    let nsb = k / QK_K;
    let q8k = |isa| {
        let (mut qs, mut d, mut bsums) = (
            vec![Lane::default(); k / 32],
            vec![0.0; nsb],
            vec![0; nsb * 16],
        );
        quantize_q8k_row(isa, &x, &mut qs, &mut d, &mut bsums);
        (qs.iter().map(|l| l.0).collect::<Vec<_>>(), d, bsums)
    };
    assert_eq!(q8k(isa()), q8k(Isa::Scalar));
}

#[test]
fn q8_quantizer_follows_ggml() {
    let mut x = random(QK8, 3);
    x[5] = -1.5;
    let mut q = Lane::default();
    let (d, s) = acts::quantize_q8_block(&x, &mut q.0);
    assert_eq!(d, f16::from_f32(1.5 / 127.0).to_f32());
    assert_eq!(q.0[5], -127);
    let sum: i32 = q.0.iter().map(|&v| v as i32).sum();
    assert_eq!(s, f16::from_f32(1.5 / 127.0 * sum as f32).to_f32());
    for (q, v) in q.0.iter().zip(&x) {
        assert!((*q as f32 - v * 127.0 / 1.5).abs() <= 0.5 + 1e-4);
    }
}

#[test]
fn batches_sum_exactly_like_single_rows() {
    for isa in isas() {
        for qtype in ALL {
            for cols in col_counts(qtype) {
                let w = random_matrix(qtype, 45, cols, 11);
                // 13 = 8 + 4 + 1 and 64 take every row count of the packed kernels.
                for m in [1, 3, 7, 13, 64] {
                    let x = random(m * cols, 100 + m as u64);
                    let batched = run(&w, isa, &x, m);
                    for i in 0..m {
                        let single = run(&w, isa, &x[i * cols..(i + 1) * cols], 1);
                        let got = &batched[i * w.rows()..(i + 1) * w.rows()];
                        assert!(
                            got.iter()
                                .zip(&single)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{qtype} {isa:?} k={cols} m={m} row {i} differs from a single row"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn products_match_f32_of_dequantized_weights() {
    for isa in isas() {
        for qtype in ALL {
            let (n, k, m) = (33, COLS, 5);
            let w = random_matrix(qtype, n, k, 21);
            let x = random(m * k, 22);
            let got = run(&w, isa, &x, m);
            let mut row = vec![0f32; k];
            let mut expected = vec![0f32; m * n];
            for j in 0..n {
                w.dequantize_row(j, &mut row);
                for i in 0..m {
                    let xi = &x[i * k..(i + 1) * k];
                    expected[i * n + j] = xi.iter().zip(&row).map(|(a, b)| a * b).sum();
                }
            }
            let err = relative_error(&got, &expected);
            let bound = if qtype.act_kind() == ActKind::F32 {
                1e-5
            } else {
                1e-2
            };
            assert!(
                err < bound,
                "{qtype} {isa:?}: relative error {err} to the f32 product"
            );
        }
    }
}

fn relative_error(got: &[f32], expected: &[f32]) -> f32 {
    let diff: f32 = got.iter().zip(expected).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f32 = expected.iter().map(|b| b * b).sum();
    (diff / norm).sqrt()
}

#[test]
fn dequantize_row_matches_candle() {
    for qtype in ALL {
        let (n, k) = (6, COLS);
        let values = random(n * k, 31);
        let (qt, bytes) = quantize(qtype, &values, n, k);
        let w = QuantMatrix::from_vec(bytes, qtype, n, k).unwrap();
        let reference = qt
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut row = vec![0f32; k];
        for j in 0..n {
            w.dequantize_row(j, &mut row);
            for (c, (a, b)) in row.iter().zip(&reference[j * k..]).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{qtype} row {j} col {c}: {a} vs candle {b}"
                );
            }
        }
    }
}

#[test]
fn products_match_candle_qmatmul() {
    for qtype in ALL.into_iter().skip(2) {
        let (n, k, m) = (40, COLS, 3);
        let values = random(n * k, 41);
        let (qt, bytes) = quantize(qtype, &values, n, k);
        let w = QuantMatrix::from_vec(bytes, qtype, n, k).unwrap();
        let x = random(m * k, 42);
        let candle = QMatMul::from_qtensor(qt)
            .unwrap()
            .forward(&Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut got = vec![0f32; m * n];
        w.matmul(&x, m, &mut got, &mut Scratch::new());
        let err = relative_error(&got, &candle);
        assert!(err < 2e-3, "{qtype}: relative difference {err} to candle");
    }
}

#[test]
fn many_matches_one_at_a_time() {
    for isa in isas() {
        let k_quants = [
            random_matrix(QuantType::Q4K, 64, 512, 51),
            random_matrix(QuantType::Q6K, 24, 512, 52),
            random_matrix(QuantType::Q4K, 24, 512, 53),
        ];
        // 32-block types (packed for AVX-512), row counts that leave partial groups.
        let blocks_32 = [
            random_matrix(QuantType::Q4_0, 40, 512, 58),
            random_matrix(QuantType::Q8_0, 24, 512, 59),
            random_matrix(QuantType::Q4_1, 17, 512, 60),
        ];
        for mats in [k_quants, blocks_32] {
            let mats = mats.map(|w| w.pack_for(isa));
            for m in [1, 6] {
                let x = random(m * 512, 54);
                let mut outs: Vec<Vec<f32>> =
                    mats.iter().map(|w| vec![0.0; m * w.rows()]).collect();
                let refs: Vec<&QuantMatrix> = mats.iter().collect();
                let mut slices: Vec<&mut [f32]> =
                    outs.iter_mut().map(|o| o.as_mut_slice()).collect();
                matmul_many_with(isa, &refs, &x, m, &mut slices, &mut Scratch::new());
                for (w, out) in mats.iter().zip(&outs) {
                    let single = run(w, isa, &x, m);
                    assert!(
                        out.iter()
                            .zip(&single)
                            .all(|(a, b)| a.to_bits() == b.to_bits())
                    );
                }
            }
        }
        // Mixed activation formats fall back to one product at a time.
        let mixed = [
            random_matrix(QuantType::Q4_1, 8, 512, 55),
            random_matrix(QuantType::Q6K, 8, 512, 56),
        ]
        .map(|w| w.pack_for(isa));
        let x = random(512, 57);
        let (mut a, mut b) = (vec![0.0; 8], vec![0.0; 8]);
        matmul_many_with(
            isa,
            &[&mixed[0], &mixed[1]],
            &x,
            1,
            &mut [&mut a, &mut b],
            &mut Scratch::new(),
        );
        assert_eq!(a, run(&mixed[0], isa, &x, 1));
        assert_eq!(b, run(&mixed[1], isa, &x, 1));
    }
}

#[test]
fn new_checks_shapes() {
    let bytes = vec![0u8; 20 * 8];
    let err = QuantMatrix::from_vec(bytes.clone(), QuantType::Q4_1, 4, 48).unwrap_err();
    assert!(err.to_string().contains("multiple of 32"), "{err}");
    let err = QuantMatrix::from_vec(bytes.clone(), QuantType::Q4_1, 5, 64).unwrap_err();
    assert!(err.to_string().contains("needs 200 bytes"), "{err}");
    let err = QuantMatrix::from_vec(vec![0u8; 144], QuantType::Q4K, 1, 128).unwrap_err();
    assert!(err.to_string().contains("multiple of 256"), "{err}");
    let shared: SharedBytes = Arc::new(vec![0u8; 7 + 160]);
    let w = QuantMatrix::new(shared, 7, QuantType::Q4_1, 4, 64).unwrap();
    assert_eq!((w.rows(), w.cols(), w.qtype()), (4, 64, QuantType::Q4_1));
    assert_eq!(w.data().len(), 160);
}

#[test]
fn empty_batches_and_odd_shapes() {
    for isa in isas() {
        for qtype in ALL {
            let w = random_matrix(qtype, 1, 256, 61);
            let mut out: Vec<f32> = vec![];
            w.matmul_with(isa, &[], 0, &mut out, &mut Scratch::new());
            let x = random(256 * 5, 62);
            let got = run(&w, isa, &x, 5);
            assert!(got.iter().all(|v| v.is_finite()));
        }
        // F32 weights take any number of columns, tails included.
        let w = random_matrix(QuantType::F32, 3, 13, 63);
        let x = random(2 * 13, 64);
        let got = run(&w, isa, &x, 2);
        let mut row = vec![0f32; 13];
        w.dequantize_row(1, &mut row);
        let expected: f32 = x[13..].iter().zip(&row).map(|(a, b)| a * b).sum();
        assert!((got[3 + 1] - expected).abs() < 1e-5);
    }
}

#[test]
fn zero_activations_give_zero() {
    for isa in isas() {
        for qtype in ALL {
            let w = random_matrix(qtype, 9, 512, 71);
            let got = run(&w, isa, &vec![0.0; 2 * 512], 2);
            assert!(got.iter().all(|&v| v == 0.0), "{qtype} {isa:?}: {got:?}");
        }
    }
}

#[test]
fn scratch_stops_allocating() {
    let w = random_matrix(QuantType::Q4_1, 64, 576, 81);
    let x = random(8 * 576, 82);
    let mut scratch = Scratch::new();
    let mut out = vec![0f32; 8 * 64];
    w.matmul(&x, 8, &mut out, &mut scratch);
    let before = (scratch.q8.view().qs.as_ptr(), scratch.q8.view().d.as_ptr());
    for m in [1, 8, 3] {
        w.matmul(&x[..m * 576], m, &mut out[..m * 64], &mut scratch);
    }
    let after = (scratch.q8.view().qs.as_ptr(), scratch.q8.view().d.as_ptr());
    assert_eq!(before, after);
}

#[test]
fn types_know_their_blocks() {
    for qtype in ALL {
        let bytes = ggml_bytes(qtype, &random(QK_K, 91), 1, QK_K);
        assert_eq!(bytes.len(), qtype.row_bytes(QK_K), "{qtype}");
        assert_eq!(QuantType::try_from(ggml_dtype(qtype)).unwrap(), qtype);
    }
    assert_eq!(QuantType::from_ggml_id(3), Some(QuantType::Q4_1));
    assert_eq!(QuantType::from_ggml_id(14), Some(QuantType::Q6K));
    assert_eq!(QuantType::from_ggml_id(6), Some(QuantType::Q5_0));
    assert_eq!(QuantType::from_ggml_id(9), None);
}

#[test]
fn reads_blocks_in_place_from_a_memory_map() {
    use std::io::Write;
    let (n, k) = (8, 256);
    let bytes = ggml_bytes(QuantType::Q4K, &random(n * k, 101), n, k);
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&[0u8; 13]).unwrap(); // a header before the tensor, unaligned on purpose
    file.write_all(&bytes).unwrap();
    // SAFETY: the file is private to this test and not modified while mapped.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.unwrap());
    let w = QuantMatrix::new(map.clone(), 13, QuantType::Q4K, n, k).unwrap();
    assert_eq!(
        w.data().as_ptr(),
        map[13..].as_ptr(),
        "the blocks are not copied"
    );
    let owned = QuantMatrix::from_vec(bytes, QuantType::Q4K, n, k).unwrap();
    let x = random(2 * k, 102);
    let (mut a, mut b) = (vec![0f32; 2 * n], vec![0f32; 2 * n]);
    w.matmul(&x, 2, &mut a, &mut Scratch::new());
    owned.matmul(&x, 2, &mut b, &mut Scratch::new());
    assert_eq!(a, b);
}

/// The packed K-quant product of `w` (packed) with the kernels of `avx512::previous`
/// (`previous`) or the current ones, as the engine calls them.
#[cfg(target_arch = "x86_64")]
fn packed_k_product(
    w: &QuantMatrix,
    acts: &Q8KActs<'_>,
    m: usize,
    out: &mut [f32],
    previous: bool,
) {
    if previous {
        let kernels = |q| {
            let (one, four) = avx512::previous::k_kernels(q);
            PackedKernels {
                one,
                four,
                eight: None,
            }
        };
        packed_product(&[w], acts, m, &mut [out], kernels);
    } else {
        let kernels = |q| {
            let (one, four, eight) = avx512::k_kernels(q);
            PackedKernels {
                one,
                four,
                eight: Some(eight),
            }
        };
        packed_product(&[w], acts, m, &mut [out], kernels);
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn k_quant_kernels_match_previous_bit_for_bit() {
    if isa() != Isa::Avx512Vnni {
        return;
    }
    for qtype in [QuantType::Q4K, QuantType::Q6K] {
        for (n, k) in [(37, 1280), (64, 768)] {
            let w = random_matrix(qtype, n, k, 31).pack_for(Isa::Avx512Vnni);
            for m in [1, 5, 8, 13, 29, 64] {
                let x = random(m * k, 32 + m as u64);
                let mut buf = Q8KBuf::default();
                buf.quantize(&x, m, k, Isa::Avx512Vnni.vex());
                let (mut old, mut new) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                packed_k_product(&w, &buf.view(), m, &mut old, true);
                packed_k_product(&w, &buf.view(), m, &mut new, false);
                for (i, (a, b)) in new.iter().zip(&old).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{qtype} {n}x{k} m={m} element {i}: now {a}, before {b}"
                    );
                }
            }
        }
    }
}

/// Packed Q4_K and Q6_K products on Qwen2.5-Coder-1.5B's shapes for a 512-token prompt:
/// the kernels before the 8-row tiles (`avx512::previous`) and now, alternated in one
/// process so that a busy machine slows both alike. Prints GFLOP/s (2mnk / time) by the
/// process's CPU time, which other processes inflate far less than wall time (with one
/// thread it is the kernel's own time; with more it includes the pool's spinning), and the
/// ratio. `RAYON_NUM_THREADS=1 cargo test --release -p verre-engine --lib
/// k_quant_prefill_throughput -- --ignored --nocapture` (release: see below).
#[test]
#[ignore = "a measurement, not a check"]
#[cfg(target_arch = "x86_64")]
fn k_quant_prefill_throughput() {
    k_quant_throughput(512, 11);
}

/// As [`k_quant_prefill_throughput`] for one activation row (decode): the one-row kernels
/// of `avx512::previous` and now. Measure in a release build (`--release`): the test
/// profile's debug assertions and overflow checks slow the kernels several times over.
/// `RAYON_NUM_THREADS=1 cargo test --release -p verre-engine --lib k_quant_decode_throughput
/// -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check"]
#[cfg(target_arch = "x86_64")]
fn k_quant_decode_throughput() {
    k_quant_throughput(1, 201);
}

/// Seconds of CPU time on `clock` (the process's or the calling thread's).
#[cfg(target_arch = "x86_64")]
fn cpu_seconds(clock: libc::clockid_t) -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

#[cfg(target_arch = "x86_64")]
fn k_quant_throughput(m: usize, samples: usize) {
    if isa() != Isa::Avx512Vnni {
        eprintln!("no AVX-512 VNNI here: the packed kernels do not run");
        return;
    }
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let cpu_seconds = || cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID);
    println!("{threads} threads, m = {m}, {samples} alternated samples each; CPU time");
    println!(
        "type  k->n        before GFLOP/s (min, median)  now GFLOP/s (min, median)  now/before (medians)"
    );
    // Q and O, K and V, gate and up, down; Q4_K_M keeps V and half the downs in Q6_K.
    let shapes = [
        (QuantType::Q4K, 1536, 1536),
        (QuantType::Q4K, 1536, 256),
        (QuantType::Q4K, 1536, 8960),
        (QuantType::Q4K, 8960, 1536),
        (QuantType::Q6K, 1536, 256),
        (QuantType::Q6K, 1536, 8960),
        (QuantType::Q6K, 8960, 1536),
    ];
    for (qtype, k, n) in shapes {
        let w = random_matrix(qtype, n, k, 41).pack_for(Isa::Avx512Vnni);
        let x = random(m * k, 42);
        let mut buf = Q8KBuf::default();
        buf.quantize(&x, m, k, Isa::Avx512Vnni.vex());
        let acts = buf.view();
        let mut out = vec![0f32; m * n];
        let mut time = |previous: bool| {
            let start = cpu_seconds();
            pool.install(|| packed_k_product(&w, &acts, m, &mut out, previous));
            cpu_seconds() - start
        };
        time(true);
        time(false);
        let (mut before, mut now) = (Vec::new(), Vec::new());
        for _ in 0..samples {
            before.push(time(true));
            now.push(time(false));
        }
        before.sort_by(f64::total_cmp);
        now.sort_by(f64::total_cmp);
        let gflop = 2.0 * (m * n * k) as f64 / 1e9;
        let (b_med, n_med) = (before[samples / 2], now[samples / 2]);
        println!(
            "{:<5} {:<11} {:>8.1} {:>8.1} {:>18.1} {:>8.1} {:>12.3}x",
            qtype.to_string(),
            format!("{k}->{n}"),
            gflop / before[0],
            gflop / b_med,
            gflop / now[0],
            gflop / n_med,
            b_med / n_med
        );
    }
}

/// The one-row K-quant kernels on weights that stay in L1 (one group of 16 rows, 6
/// super-blocks): their arithmetic rate without memory, in CPU time per super-block of a
/// group and in bytes of weights per nanosecond. `cargo test --release -p verre-engine
/// --lib k_quant_kernel_rate -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a check"]
#[cfg(target_arch = "x86_64")]
fn k_quant_kernel_rate() {
    if isa() != Isa::Avx512Vnni {
        eprintln!("no AVX-512 VNNI here: the packed kernels do not run");
        return;
    }
    let cpu_seconds = || cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID);
    let k = 1536;
    for qtype in [QuantType::Q4K, QuantType::Q6K] {
        let w = random_matrix(qtype, GROUP, k, 51).pack_for(Isa::Avx512Vnni);
        let packed = w.packed.as_deref().unwrap();
        let x = random(k, 52);
        let mut buf = Q8KBuf::default();
        buf.quantize(&x, 1, k, Isa::Avx512Vnni.vex());
        let acts = buf.view();
        let (one, _, _) = avx512::k_kernels(qtype);
        let mut out = [0f32; GROUP];
        let calls = 200_000;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let start = cpu_seconds();
            for _ in 0..calls {
                // SAFETY: one packed group of `k` columns, one activation row, 16 outputs.
                unsafe {
                    one(
                        packed.bytes().as_ptr(),
                        packed.stride,
                        &acts,
                        0,
                        out.as_mut_ptr(),
                        GROUP,
                        GROUP,
                    )
                };
                std::hint::black_box(&mut out);
            }
            best = best.min((cpu_seconds() - start) / calls as f64);
        }
        let per_sb = best / (k / QK_K) as f64;
        println!(
            "{qtype}: {:.1} ns per super-block of 16 rows, {:.1} bytes/ns of packed weights",
            per_sb * 1e9,
            packed.stride as f64 / (per_sb * 1e9)
        );
    }
}
