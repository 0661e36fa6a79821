//! The model runtime on plumbing models (the tile channel's embedder and detector, a random-weight
//! separator): sessions, contract and checksum checks, batching, the embedder's bound, separator
//! overlap-add, provider errors.

use std::path::Path;

use stemmark_models::decision::Calibration;
use stemmark_models::detector::Detector;
use stemmark_models::embedder::Embedder;
use stemmark_models::keys::Key;
use stemmark_models::manifest::Manifest;
use stemmark_models::runtime::{self, Provider};
use stemmark_models::separator::Separator;
use stemmark_models::spec::BLOCK;
use stemmark_models::tile::{Params, Patterns};
use stemmark_offline::testkit;

fn models() -> tempfile::TempDir {
    runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
    let d = tempfile::tempdir().unwrap();
    testkit::plumbing_model_dir(d.path(), 11).unwrap();
    d
}

fn energy(x: &[f32]) -> f64 {
    x.iter().map(|v| (*v as f64).powi(2)).sum()
}

#[test]
fn a_model_in_the_wrong_role_is_rejected_by_name() {
    let d = models();
    std::fs::copy(d.path().join("embedder.onnx"), d.path().join("detector.onnx")).unwrap();
    Manifest::describe(d.path(), "plumbing", Params::default(), Calibration::default()).unwrap().save(d.path()).unwrap();
    let e = Detector::open(d.path(), Provider::Cpu).err().expect("must fail").to_string();
    assert!(e.contains("does not follow the detector contract"), "{e}");
}

#[test]
fn tampered_or_missing_models_are_named() {
    let d = models();
    let mut bytes = std::fs::read(d.path().join("separator.onnx")).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xFF;
    std::fs::write(d.path().join("separator.onnx"), bytes).unwrap();
    let e = Separator::open(d.path(), Provider::Cpu).err().unwrap().to_string();
    assert!(e.contains("does not match its manifest"), "{e}");
    std::fs::remove_file(d.path().join("embedder.onnx")).unwrap();
    let e = Embedder::open(d.path(), Provider::Cpu).err().unwrap().to_string();
    assert!(e.contains("embedder model file") && e.contains("is missing"), "{e}");
}

#[test]
fn cuda_on_request_fails_loudly_without_a_gpu() {
    // The CPU build of ONNX Runtime (what CI installs) has no CUDA provider: asking for CUDA must
    // be an error, never a silent fall-back to the CPU.
    let d = models();
    if std::env::var_os("STEMMARK_EXPECT_CUDA").is_some() {
        let det = Detector::open(d.path(), Provider::Cuda).expect("CUDA session");
        assert_eq!(det.provider(), Provider::Cuda);
        return;
    }
    let e = Detector::open(d.path(), Provider::Cuda).err().expect("no CUDA here").to_string();
    assert!(e.to_lowercase().contains("cuda"), "{e}");
}

#[test]
fn batched_detection_equals_one_block_at_a_time() {
    let d = models();
    let mut det = Detector::open(d.path(), Provider::Cpu).unwrap();
    let a = testkit::music_like(44_100, 6.0, 5).mid();
    let key = Key::from_bytes([3; 16], "k");
    let blocks: Vec<&[f32]> = a.chunks_exact(BLOCK).take(2).collect();
    let all = det.block_features(&blocks).unwrap();
    for (b, block) in blocks.iter().enumerate() {
        let single = det.block_features(&[block]).unwrap().remove(0);
        let ((va, ca), (vs, cs)) = (all[b].parts(), single.parts());
        // ONNX Runtime's f32 kernels may round by batch shape: unit values (clipped at ±2) within
        // 1e-5, and a unit whose level sits on a class edge may change cell.
        let dv = va.iter().zip(vs).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        let moved = ca.iter().zip(cs).filter(|(x, y)| x != y).count();
        assert!(dv < 1e-5 && moved * 100 <= ca.len(), "block {b}: values differ by {dv}, {moved} cells moved");
    }
    // The key (and the grid index) change the sums.
    let (p, q) = (Patterns::from_key(&key), Patterns::from_key(&Key::from_bytes([4; 16], "o")));
    assert_ne!(all[0].cell_sums(&p, 0), all[0].cell_sums(&q, 0));
    assert_ne!(all[0].cell_sums(&p, 0), all[0].cell_sums(&p, 1));
}

#[test]
fn embedder_strength_zero_is_identity_and_the_change_is_bounded() {
    let d = models();
    let mut emb = Embedder::open(d.path(), Provider::Cpu).unwrap();
    let x = testkit::music_like(44_100, 5.3, 6).channels;
    let key = Key::from_bytes([5; 16], "k");
    let same = emb.embed(&x, &key, 42, 0.0, &mut |_, _| {}).unwrap();
    for (a, b) in x.iter().zip(&same) {
        let err = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "strength 0 changed the audio by {err}");
    }
    let marked = emb.embed(&x, &key, 42, 1.0, &mut |_, _| {}).unwrap();
    for (a, b) in x.iter().zip(&marked) {
        let diff: Vec<f32> = a.iter().zip(b).map(|(p, q)| p - q).collect();
        let ratio = (energy(&diff) / energy(a)).sqrt();
        // every cell moves by at most e^cap − 1 (17 %), so the whole change does too
        let bound = emb.manifest().channel.cell_cap.exp_m1();
        assert!(ratio > 1e-3 && ratio <= bound + 1e-3, "relative change {ratio}");
    }
    // stronger marks change more, and a mono stem works too
    let strong = emb.embed(&x, &key, 42, 2.0, &mut |_, _| {}).unwrap();
    let d1: Vec<f32> = x[0].iter().zip(&marked[0]).map(|(p, q)| p - q).collect();
    let d2: Vec<f32> = x[0].iter().zip(&strong[0]).map(|(p, q)| p - q).collect();
    assert!(energy(&d2) > 2.0 * energy(&d1));
    assert_eq!(emb.embed(&x[..1], &key, 42, 1.0, &mut |_, _| {}).unwrap().len(), 1);
    assert!(emb.embed(&x, &key, 1 << 24, 1.0, &mut |_, _| {}).is_err());
}

#[test]
fn separator_overlap_add_keeps_stems_summing_to_a_long_mix() {
    let d = models();
    let mut sep = Separator::open(d.path(), Provider::Cpu).unwrap();
    // 21 s: three overlapping 8 s segments and a short tail
    let mix = testkit::music_like(44_100, 21.0, 8).channels;
    let mut calls = Vec::new();
    let stems = sep.separate(&mix, &mut |d, t| calls.push((d, t))).unwrap();
    assert_eq!(calls.last().map(|c| c.0 == c.1), Some(true), "{calls:?}");
    for c in 0..2 {
        let err = (0..mix[0].len()).map(|i| (mix[c][i] - stems[0][c][i] - stems[1][c][i]).abs()).fold(0f32, f32::max);
        assert!(err < 1e-4, "channel {c}: {err}");
    }
}

#[test]
fn a_named_library_that_does_not_exist_is_an_error() {
    let e = runtime::init(Some(Path::new("/nonexistent/libonnxruntime.so")), &[]);
    // Either ORT is already loaded in this process (conflict) or the path is rejected: both name it.
    assert!(e.unwrap_err().to_string().contains("/nonexistent/libonnxruntime.so"));
}

/// The embedding computed directly on whole-buffer spectra: the oracle for the stream. The
/// signal is padded with silence to whole blocks (the stream completes its last block so).
fn oracle(emb: &mut Embedder, x: &[Vec<f32>], key: &Key, payload: u32) -> Vec<Vec<f32>> {
    use ndarray::{Axis, s};
    use stemmark_models::spec::FRAMES_PER_BLOCK;
    use stemmark_models::stft::Stft;
    let len = x[0].len();
    let padded: Vec<Vec<f32>> = x.iter().map(|c| [c.clone(), vec![0.0; BLOCK]].concat()).collect();
    let mut stft = Stft::new();
    let mid: Vec<f32> = (0..padded[0].len()).map(|i| padded.iter().map(|c| c[i]).sum::<f32>() / x.len() as f32).collect();
    let mag = stft.forward(&mid).magnitude();
    let word = stemmark_models::payload::encode(payload, key).unwrap();
    let patterns = Patterns::from_key(key);
    let mut mask = mag.mapv(|_| 1.0f32);
    // Every block that holds a frame of the original signal is marked whole.
    let blocks = stemmark_models::stft::frames_for_len(len).div_ceil(FRAMES_PER_BLOCK);
    for k in 0..blocks {
        let (start, end) = (k * FRAMES_PER_BLOCK, (k + 1) * FRAMES_PER_BLOCK);
        let block = mag.slice(s![.., start..end]).insert_axis(Axis(0));
        let message = stemmark_models::payload::to_bipolar(stemmark_models::payload::block_word(word, key, k as i64));
        let m = emb.masks(block, &patterns, &[message], &[k as i64], 1.0).unwrap();
        mask.slice_mut(s![.., start..end]).assign(&m.index_axis(Axis(0), 0));
    }
    padded
        .iter()
        .map(|c| {
            let mut spec = stft.forward(c);
            spec.apply_mask(mask.view()).unwrap();
            stft.inverse(&spec, c.len())[..len].to_vec()
        })
        .collect()
}

#[test]
fn streaming_embedding_equals_whole_buffer_and_keeps_its_latency() {
    use stemmark_models::embed_stream::{EmbedStream, LATENCY};
    let d = models();
    let mut emb = Embedder::open(d.path(), Provider::Cpu).unwrap();
    let key = Key::from_bytes([9; 16], "k");
    // 4.6 s: two full blocks and a partial third, stereo
    let x = testkit::music_like(44_100, 4.6, 12).channels;
    let want = oracle(&mut emb, &x, &key, 777);
    let whole = emb.embed(&x, &key, 777, 1.0, &mut |_, _| {}).unwrap();
    let mut stream = EmbedStream::new(2, &key, 777, 1.0, 0).unwrap();
    let mut out = vec![Vec::new(), Vec::new()];
    let mut pos = 0;
    let mut sizes = [1usize, 0, 4096, 37, 512, 88_200, 3, 1000].iter().cycle();
    while pos < x[0].len() {
        let n = (*sizes.next().unwrap()).min(x[0].len() - pos);
        stream.push(&mut emb, &[&x[0][pos..pos + n], &x[1][pos..pos + n]], &mut out).unwrap();
        pos += n;
        assert!(out[0].len() + LATENCY >= pos, "ran dry: {} out after {pos} in", out[0].len());
        assert_eq!(out[0].len(), out[1].len());
    }
    stream.finish(&mut emb, &mut out).unwrap();
    for c in 0..2 {
        assert_eq!(out[c].len(), x[c].len());
        assert_eq!(whole[c].len(), x[c].len());
        let e1 = want[c].iter().zip(&out[c]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let e2 = want[c].iter().zip(&whole[c]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(e1 < 1e-5 && e2 < 1e-5, "channel {c}: stream {e1}, whole {e2}");
    }
    // a second file through the same (reset) stream gives the same result (exact by design: the
    // same calls, in the same shapes, on the same samples)
    let mut again = vec![Vec::new(), Vec::new()];
    stream.push(&mut emb, &[&x[0], &x[1]], &mut again).unwrap();
    stream.finish(&mut emb, &mut again).unwrap();
    assert_eq!(again, out);
}

#[test]
fn streaming_detection_on_the_grid_matches_file_detection() {
    use stemmark_models::decision::Verdict;
    use stemmark_models::detect_stream::DetectStream;
    use stemmark_models::detector::Alignment;
    let d = models();
    let mut det = Detector::open(d.path(), Provider::Cpu).unwrap();
    let mut sep = Separator::open(d.path(), Provider::Cpu).unwrap();
    let keys = vec![Key::from_bytes([1; 16], "a"), Key::from_bytes([2; 16], "b")];
    // 6.8 s with a silent stretch: three full blocks (one of them silent) and a partial fourth;
    // block 2's after-context is cut short by the end
    let mut x = testkit::music_like(44_100, 6.8, 13).channels;
    for c in &mut x {
        c[BLOCK..2 * BLOCK].fill(0.0);
    }
    let mut s = DetectStream::new(2, keys.clone(), det.calibration(), *det.channel(), true, 0).unwrap();
    let mut pos = 0;
    for n in [1usize, 4096, 333, 100_000, 7, 50_000].iter().cycle() {
        if pos == x[0].len() {
            break;
        }
        let n = (*n).min(x[0].len() - pos);
        s.push(&mut det, Some(&mut sep), &[&x[0][pos..pos + n], &x[1][pos..pos + n]]).unwrap();
        pos += n;
    }
    assert_eq!(s.blocks_done, 2, "block 2 waits for its after-context");
    s.finish(&mut det, Some(&mut sep)).unwrap();
    assert_eq!(s.blocks_done, 3);
    let readings = s.readings();
    assert_eq!(readings.len(), 8, "mix + 2 stems + joint, × 2 keys");
    // Every reading, the joint's too, is charged for the key's four (known grid: 1 shift × 4).
    for r in &readings {
        let charged = stemmark_models::code::false_payload_bound(r.decision.z, 4);
        assert!((r.decision.false_positive_rate - charged).abs() <= 1e-12, "{} {}: {} vs {charged}", r.path, r.key, r.decision.false_positive_rate);
        assert_eq!(r.blocks.len(), 3, "{} {}", r.path, r.key);
    }
    assert_eq!(readings.iter().filter(|r| r.path == "joint").count(), 2);
    let mid: Vec<f32> = (0..x[0].len()).map(|i| 0.5 * (x[0][i] + x[1][i])).collect();
    let file = det.detect(&mid, &keys, Alignment::Fixed(0)).unwrap();
    for (r, f) in readings.iter().filter(|r| r.path == "mix").zip(&file) {
        assert_eq!(r.key, f.key);
        assert_eq!(r.decision.blocks, 2, "the silent block is left out");
        assert_eq!(r.decision.blocks, f.decision.blocks);
        // The stream runs the detector one block at a time, the file path in batches; ONNX Runtime's
        // f32 kernels may round a block differently by batch shape and CPU (~1e-6 relative), so z
        // agrees to 1e-4 of its size, not bit for bit.
        let tol = 1e-4 * f.decision.z.abs().max(1.0);
        assert!((r.decision.z - f.decision.z).abs() < tol, "{} vs {}", r.decision.z, f.decision.z);
        assert_eq!(r.decision.payload, f.decision.payload);
        assert_eq!(r.blocks.len(), 3);
        use stemmark_models::detect_stream::BlockState;
        assert_eq!(r.blocks[1], BlockState::Uncertain, "silent block");
        assert!(r.decision.verdict != Verdict::Found || r.blocks[0] == BlockState::Marked);
    }
}

/// The grid search finds a mark wherever its grid lies between two coarse probe points. A probe
/// reads a mark up to about two hops off its grid; with the old 9-hop coarse step a Stemmark Embed
/// bounce from Ardour 7, whose grid sat 3 hops past a coarse point, was read nowhere. Here the
/// marked music starts 2 to 9 hops into unmarked music, so its grid sits at every distance from
/// the coarse points; the payload must be found at exactly that offset.
#[test]
fn the_offset_search_finds_a_grid_between_its_coarse_points() {
    use stemmark_models::detector::Alignment;
    use stemmark_models::spec::HOP;
    let d = models();
    let mut emb = Embedder::open(d.path(), Provider::Cpu).unwrap();
    let mut det = Detector::open(d.path(), Provider::Cpu).unwrap();
    let key = Key::from_bytes([9; 16], "lead");
    let payload = 0x5a17e;
    let marked = emb.embed(&testkit::music_like(44_100, 12.0, 21).channels, &key, payload, 1.0, &mut |_, _| {}).unwrap();
    let before = testkit::music_like(44_100, 1.0, 22).channels;
    for hops in 2..=9 {
        let pad = hops * HOP;
        let mid: Vec<f32> = (0..pad)
            .map(|i| (before[0][i] + before[1][i]) / 2.0)
            .chain(marked[0].iter().zip(&marked[1]).map(|(a, b)| (a + b) / 2.0))
            .collect();
        let r = det.detect(&mid, std::slice::from_ref(&key), Alignment::Search).unwrap().remove(0);
        assert_eq!((r.decision.payload, r.offset), (Some(payload), pad), "grid {hops} hops in: {:?}", r.decision);
    }
}
