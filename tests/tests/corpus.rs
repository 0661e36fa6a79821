//! Corpus building and loading on synthesised fixture corpora (no Debian packages, no ffmpeg):
//! alignment, split disjointness, resumability, per-item failure handling and the loader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use stemmark_models::spec::{BLOCK, CLIP, SAMPLE_RATE, STEM_LUFS};
use stemmark_offline::audio::{self, Audio};
use stemmark_offline::corpus::loader::Channels;
use stemmark_offline::corpus::manifest::split_of;
use stemmark_offline::corpus::{
    Corpus, Ctx, Item, Kind, Loader, Manifest, Role, Scenario, Split, build_items, dsp,
};

fn ctx(out: &Path) -> Ctx {
    Ctx {
        out: out.to_path_buf(),
        small: false,
        speech_passes: 0,
        python: None,
        script: PathBuf::new(),
        soundfonts: Vec::new(),
    }
}

/// A stereo tone with bursts of silence, `secs` long, at the model rate.
fn tone(secs: f64, freq: f32, amp: f32, seed: u32) -> Audio {
    let n = (secs * SAMPLE_RATE as f64) as usize;
    let x: Vec<f32> = (0..n)
        .map(|i| {
            // 0.4 s of silence in every 7 s (too short to be cut) and a 3 s gap every 30 s (cut)
            let t = i as f64 / SAMPLE_RATE as f64 + seed as f64;
            if t % 7.0 < 0.4 || t % 30.0 < 3.0 {
                0.0
            } else {
                amp * (2.0 * std::f32::consts::PI * freq * i as f32 / SAMPLE_RATE as f32).sin()
            }
        })
        .collect();
    Audio::new(SAMPLE_RATE, vec![x.clone(), x.iter().map(|v| v * 0.5).collect()])
}

fn fixture_items(src: &Path) -> Vec<Item> {
    let mut items = Vec::new();
    for t in 0..6 {
        let f = src.join(format!("track{t}.wav"));
        audio::write_wav(&f, &tone(50.0, 220.0 + 40.0 * t as f32, 0.3, t)).unwrap();
        let id = format!("fixture-music/track{t}");
        items.push(Item {
            id: id.clone(),
            group: id.clone(),
            scenario: Scenario::SpeechMusic,
            package: "fixture".into(),
            license: "CC0".into(),
            origin: f.display().to_string(),
            kind: Kind::Music { file: f },
        });
    }
    for lang in ["aa", "bb", "cc", "dd", "ee"] {
        let files: Vec<PathBuf> = (0..30)
            .map(|w| {
                let f = src.join(format!("{lang}-{w}.wav"));
                let a = tone(0.6 + 0.05 * w as f64, 300.0 + 10.0 * w as f32, 0.2, 4);
                audio::write_wav(&f, &Audio::new(SAMPLE_RATE, vec![a.channels[0].clone()])).unwrap();
                f
            })
            .collect();
        items.push(Item {
            id: format!("fixture-speech/{lang}"),
            group: format!("speech-lang:{lang}"),
            scenario: Scenario::SpeechMusic,
            package: "fixture".into(),
            license: "CC0".into(),
            origin: lang.into(),
            kind: Kind::Speech { files },
        });
    }
    items
}

/// Pair items cannot be made without renderers, so the fixture writes pair records directly in the
/// format `build` produces (lead + accompaniment cut by the same code).
fn write_pair_items(out: &Path, n: usize) {
    for p in 0..n {
        let lead = tone(45.0, 440.0 + p as f32, 0.3, p as u32);
        let acc = tone(45.0, 110.0 + p as f32, 0.2, p as u32 + 3);
        let stems = dsp::drop_silence(&[lead, acc]);
        let id = format!("fixture-pairs/score{p}");
        let group = id.clone();
        let mut clips = Vec::new();
        for (k, c) in dsp::cut_clips(&stems, CLIP).into_iter().enumerate() {
            let files = vec![format!("pairs/s{p}/c{k}.lead.wav"), format!("pairs/s{p}/c{k}.acc.wav")];
            for (f, a) in files.iter().zip(&c) {
                dsp::write_pcm16(&out.join(f), a).unwrap();
            }
            clips.push(stemmark_offline::corpus::Clip {
                files,
                role: Role::Pair,
                seconds: 20.0,
                lufs: c.iter().map(|a| audio::loudness(a).unwrap()).collect(),
            });
        }
        let rec = stemmark_offline::corpus::ItemRecord {
            split: split_of(&group),
            id: id.clone(),
            group,
            scenario: Scenario::LeadAccompaniment,
            package: "fixture".into(),
            license: "CC0".into(),
            origin: "fixture".into(),
            notes: BTreeMap::new(),
            clips,
        };
        let path = out.join("items").join(format!("fixture-pairs_score{p}.json"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(&rec).unwrap()).unwrap();
    }
}

fn check_split_disjoint(m: &Manifest) {
    let mut sides: BTreeMap<&str, BTreeSet<Split>> = BTreeMap::new();
    for item in &m.items {
        assert_eq!(item.split, split_of(&item.group), "{}: split is not the fixed function of its group", item.id);
        sides.entry(item.group.as_str()).or_default().insert(item.split);
    }
    for (g, s) in sides {
        assert_eq!(s.len(), 1, "group {g} is in both splits");
    }
    let ids: BTreeSet<&str> = m.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), m.items.len(), "duplicate item ids");
}

#[test]
fn corpus_build_is_resumable_and_complete() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let items = fixture_items(src.path());
    let ctx = ctx(out.path());

    let first = build_items(&ctx, &items, 2).unwrap();
    assert!(first.failed.is_empty(), "{:?}", first.failed);
    assert_eq!(first.processed.len(), items.len());
    let clips: usize = first.manifest.items.iter().map(|i| i.clips.len()).sum();
    assert!(clips >= 6 * 2 + 5, "{clips}");

    // a second run does nothing and yields the same manifest
    let second = build_items(&ctx, &items, 2).unwrap();
    assert!(second.processed.is_empty(), "{:?}", second.processed);
    assert_eq!(second.manifest, first.manifest);

    // a lost clip makes exactly its item redo
    let victim = &first.manifest.items[0];
    std::fs::remove_file(out.path().join(&victim.clips[0].files[0])).unwrap();
    let third = build_items(&ctx, &items, 1).unwrap();
    assert_eq!(third.processed, vec![victim.id.clone()]);
    assert_eq!(third.manifest, first.manifest);

    // every clip is CLIP samples of stereo at the model rate, no temp files left
    for item in &third.manifest.items {
        for c in &item.clips {
            for f in &c.files {
                let a = audio::read(&out.path().join(f)).unwrap();
                assert_eq!((a.rate, a.channels.len(), a.len()), (SAMPLE_RATE, 2, CLIP), "{f}");
            }
        }
    }
    let stray = walk(out.path()).into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).count();
    assert_eq!(stray, 0);
    check_split_disjoint(&third.manifest);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[test]
fn corpus_bad_items_are_skipped_and_leave_no_partial_clips() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut items = fixture_items(src.path());
    items.truncate(2);
    let junk = src.path().join("junk.wav");
    std::fs::write(&junk, b"not audio").unwrap();
    items.push(Item {
        id: "fixture-music/junk".into(),
        group: "fixture-music/junk".into(),
        scenario: Scenario::SpeechMusic,
        package: "fixture".into(),
        license: "CC0".into(),
        origin: "junk".into(),
        kind: Kind::Music { file: junk },
    });
    // leftovers of an interrupted attempt at the junk item: a clip and a temp file, no record
    let partial = out.path().join("music/fixture-music_junk");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("c000.wav"), b"half").unwrap();
    std::fs::write(partial.join(".stemmark-x.wav.tmp"), b"half").unwrap();

    let r = build_items(&ctx(out.path()), &items, 2).unwrap();
    assert_eq!(r.failed.len(), 1, "{:?}", r.failed);
    assert!(r.failed[0].starts_with("fixture-music/junk"));
    assert_eq!(r.manifest.items.len(), 2);
    assert!(!partial.exists(), "partial clips of the failed item were left behind");
    // the failure is retried next time, the good items are not redone
    let again = build_items(&ctx(out.path()), &items, 2).unwrap();
    assert!(again.processed.is_empty());
    assert_eq!(again.failed.len(), 1);
}

#[test]
fn corpus_pair_stems_stay_sample_aligned() {
    // Impulses at the same instants in both stems must land on the same samples after silence
    // removal and cutting, and lead + accompaniment must equal the cut of the mix.
    let n = 70 * SAMPLE_RATE as usize;
    let mut lead = Audio::new(SAMPLE_RATE, vec![vec![0.0; n]; 2]);
    let mut acc = lead.clone();
    for k in 0..60 {
        // a 10 s hole from 20 s to 30 s gets cut
        let t = if k < 20 { k } else { k + 10 } as usize * SAMPLE_RATE as usize + 777;
        if t >= n {
            break;
        }
        for c in 0..2 {
            lead.channels[c][t] = 0.5;
            acc.channels[c][t] = -0.25;
            for j in 1..2000 {
                acc.channels[c][t + j] = 0.1 * ((j as f32) * 0.01).sin();
            }
        }
    }
    let mix = dsp::sum(&[&lead, &acc]);
    let cut = dsp::drop_silence(&[lead, acc]);
    let cut_mix = dsp::drop_silence(&[mix]).remove(0);
    assert_eq!(cut[0].len(), cut[1].len());
    assert!(dsp::snr_db(&cut_mix, &dsp::sum(&[&cut[0], &cut[1]])) > 120.0);
    for clip in dsp::cut_clips(&cut, CLIP) {
        assert_eq!(clip[0].len(), clip[1].len());
        for i in 0..CLIP {
            // every lead impulse has the accompaniment's impulse on the very same sample (exact by
            // design: cutting and clipping copy samples)
            if clip[0].channels[0][i] == 0.5 {
                assert_eq!(clip[1].channels[0][i], -0.25, "misaligned at {i}");
            }
        }
    }
}

#[test]
fn corpus_loader_gives_normalised_deterministic_pairs() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let items = fixture_items(src.path());
    build_items(&ctx(out.path()), &items, 2).unwrap();
    write_pair_items(out.path(), 8);
    let m = stemmark_offline::corpus::assemble(out.path(), false).unwrap();
    m.save(&out.path().join("manifest.json")).unwrap();
    check_split_disjoint(&m);

    let corpus = Corpus::open(out.path()).unwrap();
    for scenario in [Scenario::SpeechMusic, Scenario::LeadAccompaniment] {
        let split = Split::Train;
        let mut a = Loader::new(&corpus, split, scenario, 7).unwrap();
        let mut b = Loader::new(&corpus, split, scenario, 7).unwrap();
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            let (p, q) = (a.next_pair().unwrap(), b.next_pair().unwrap());
            assert_eq!(p.sources, q.sources, "same seed, different draws");
            assert_eq!(a.segment_start(), b.segment_start());
            for s in [&p.foreground, &p.background] {
                assert_eq!((s.rate, s.channels.len(), s.len()), (SAMPLE_RATE, 2, CLIP));
                let l = audio::loudness(s).unwrap().unwrap();
                assert!((l - STEM_LUFS).abs() < 0.1, "{l}");
            }
            // pairs come from the requested split only
            for f in &p.sources {
                let rel = f.strip_prefix(out.path()).unwrap().to_string_lossy().to_string();
                let item = corpus.manifest.items.iter().find(|i| i.clips.iter().any(|c| c.files.contains(&rel))).unwrap();
                assert_eq!((item.split, item.scenario), (split, scenario));
            }
            if scenario == Scenario::LeadAccompaniment {
                let [l, a] = &p.sources;
                assert_eq!(l.to_string_lossy().replace(".lead.", ".acc."), a.to_string_lossy());
            }
            seen.insert(p.sources.clone());
        }
        assert!(seen.len() > 1, "loader always returns the same pair");
        let mono = Loader::new(&corpus, split, scenario, 1).unwrap().with_channels(Channels::Mono).next_pair().unwrap();
        assert_eq!(mono.foreground.channels.len(), 1);
    }
    let mut l = Loader::new(&corpus, Split::Train, Scenario::SpeechMusic, 3).unwrap();
    let starts: BTreeSet<usize> = (0..1000).map(|_| l.segment_start()).collect();
    assert!(starts.iter().all(|s| s + BLOCK <= CLIP));
    assert!(starts.len() > 900, "segment positions are not spread");
}

/// The committed manifest (if any) keeps every group on one side of the split and holds the
/// audio the issue asks for.
#[test]
fn corpus_committed_manifest_split_is_disjoint() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../offline/corpus/manifest.json");
    let Ok(m) = Manifest::load(&path) else { return };
    check_split_disjoint(&m);
    assert!(!m.small);
}
