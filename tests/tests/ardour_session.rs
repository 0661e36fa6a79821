//! Both plugins in a real DAW session (issue #22): Ardour 7 (Debian's `ardour`), headless.
//!
//! `ardour7-lua` builds a 48 kHz session with three stereo tracks, Stemmark Embed on the first two
//! and Stemmark Detect on the master bus, and saves it. Ardour's Lua has no headless audio import,
//! so the test writes the stems into the session's `interchange/…/audiofiles/` and adds their
//! sources, regions and playlist entries to the session file, and sets each plugin's key (and
//! Embed's payload) in its saved VST3 state, where a reopened session takes them from. Reopening
//! it in `ardour7-lua` reports each plugin's latency and saves a snapshot, whose plugin states are
//! Ardour's own save of what the plugins restored. `ardour7-export` renders the master bus of
//! that snapshot, of a copy with Detect deactivated and of one with both Embeds deactivated.
//!
//! Checked: Ardour compensates Embed's 2.2 s latency (the marked render lines up with the
//! unmarked one sample for sample, the unmarked third track included); the render is bit-exact
//! with and without Detect; Detect's results file is complete (every block analysed, none
//! dropped) and agrees with `stemmark detect` reading the render on the timeline grid; with its
//! grid search, `stemmark detect` reads both payloads from the render; the reopened session
//! holds both plugins' keys and settings. Needs the release bundle and Ardour:
//! `cargo test -p stemmark-tests --test ardour_session -- --ignored --nocapture`
//! (`STEMMARK_KEEP_ARDOUR=1` keeps the session, renders and plugin log).
//!
//! Not green yet (issue #22), measured here: (1) `ardour7-export` aborts now and then (heap
//! corruption, about 1 run in 6 with a fresh HOME, also with both plugins deactivated; not seen
//! under gdb, cause not found); (2) the render with Detect active differs from the one with it
//! deactivated in the last bit from frame 17 430 on (SNR 150.7 dB, the same every run; the host
//! tests see Detect's output bit-exact, so Ardour's master path or Detect: not settled); (3)
//! Ardour 7 gives a latent plugin the timeline position of its *output*, so Embed's grid lands
//! one latency (106 512 samples at 48 kHz, mod one block) late on the timeline and Detect, which
//! reads the timeline grid, finds nothing; `stemmark detect`'s grid search reads the render.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};
use stemmark_models::detector::Alignment;
use stemmark_models::keys::Key;
use stemmark_models::runtime::{self, Provider};
use stemmark_models::spec::{BLOCK, HOP, SAMPLE_RATE};
use stemmark_offline::audio::{self, Audio};
use stemmark_tests::fixtures::{wesnoth_44k, workspace_root};

const RATE: u32 = 48_000;
const SECONDS: usize = 24;
const SESSION: &str = "stemmark";
/// (name, key, payload) of the two marked tracks.
const MARKED: [(&str, &str, u32); 2] =
    [("lead", "00112233445566778899aabbccddeeff", 0x5a17e), ("band", "f0e1d2c3b4a5968778695a4b3c2d1e0f", 0x0b0b1)];
/// Loudness of the marked stems and of the unmarked third track (LUFS).
const LEVELS: [f64; 3] = [-16.0, -16.0, -22.0];

const BUILD_LUA: &str = r#"
local dir, name = arg[1], arg[2]
AudioEngine:set_backend("None (Dummy)", "", "")
assert(AudioEngine:start(false) == 0, "the audio engine did not start")
local s = create_session(dir, name, 48000)
assert(s, "no session")
local tracks = s:new_audio_track(2, 2, nil, 3, "T", ARDOUR.PresentationInfo.max_order, ARDOUR.TrackMode.Normal, true)
local i = 0
for t in tracks:iter() do
  i = i + 1
  if i <= 2 then
    local p = ARDOUR.LuaAPI.new_plugin(s, "Stemmark Embed", ARDOUR.PluginType.VST3, "")
    assert(not p:isnil(), "Ardour does not find Stemmark Embed")
    assert(t:to_route():add_processor_by_index(p, 0, nil, true) == 0)
  end
end
local d = ARDOUR.LuaAPI.new_plugin(s, "Stemmark Detect", ARDOUR.PluginType.VST3, "")
assert(not d:isnil(), "Ardour does not find Stemmark Detect")
assert(s:master_out():add_processor_by_index(d, 0, nil, true) == 0)
s:save_state("", false, false, false, false, false)
close_session()
print("built")
"#;

const REOPEN_LUA: &str = r#"
local dir, name = arg[1], arg[2]
AudioEngine:set_backend("None (Dummy)", "", "")
assert(AudioEngine:start(false) == 0, "the audio engine did not start")
local s = load_session(dir, name)
assert(s, "the session did not load")
for r in s:get_routes():iter() do
  local i = 0
  while true do
    local p = r:nth_plugin(i)
    if p:isnil() then break end
    print(string.format("latency|%s|%s|%d", r:name(), p:name(), p:signal_latency()))
    i = i + 1
  end
end
s:save_state("reopened", false, false, false, false, false)
close_session()
"#;

struct Ardour {
    lua: PathBuf,
    export: PathBuf,
    scanner: PathBuf,
    lib: PathBuf,
}

/// Debian 12's Ardour 7, or a panic that says how to install it.
fn ardour() -> Ardour {
    let lib = PathBuf::from("/usr/lib/ardour7");
    let a = Ardour {
        lua: PathBuf::from("/usr/bin/ardour7-lua"),
        export: PathBuf::from("/usr/bin/ardour7-export"),
        scanner: lib.join("ardour-vst3-scanner"),
        lib,
    };
    for p in [&a.lua, &a.export, &a.scanner] {
        assert!(p.is_file(), "{} is missing: install Ardour with `apt-get install ardour` (cargo xtask test does)", p.display());
    }
    a
}

/// Runs an Ardour tool with the test's own HOME (its plugin cache and config), at most `secs`
/// seconds; returns stdout, panics with the output on failure.
fn run(home: &Path, cmd: &mut Command, secs: u64) -> String {
    let mut t = Command::new("timeout");
    t.arg(secs.to_string()).arg(cmd.get_program()).args(cmd.get_args());
    // Not the test's library path: cargo puts its own build's libraries there, which Ardour
    // would load instead of its own (seen: heap corruption in ardour7-export).
    t.env_remove("LD_LIBRARY_PATH");
    if let Some(d) = cmd.get_current_dir() {
        t.current_dir(d);
    }
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            t.env(k, v);
        }
    }
    let nice_log = home.join("nice.log");
    let out = t
        .env("HOME", home)
        .env("NICE_LOG", &nice_log)
        .env("STEMMARK_MODELS", workspace_root().join("models"))
        // The bundle's own ONNX Runtime, as in a producer's installation.
        .env_remove("STEMMARK_ORT_LIB")
        .output()
        .expect("cannot start an Ardour tool");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{:?} failed ({}):\n{text}\n{}\nplugin log:\n{}",
        cmd.get_program(),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&nice_log).unwrap_or_default()
    );
    text
}

/// A stem at `RATE`, brought to `lufs`.
fn stem(track: &str, seed: u32, lufs: f64) -> Vec<Vec<f32>> {
    let x = wesnoth_44k(track, SECONDS, seed);
    let mut a = Audio::new(RATE, stemmark_models::resample::resample_planar(&x, SAMPLE_RATE, RATE).unwrap());
    for c in &mut a.channels {
        c.truncate(SECONDS * RATE as usize);
    }
    let g = audio::gain_to_lufs(&a, lufs).unwrap().expect("a stem with sound");
    a.scale(g);
    a.channels
}

/// The session file with the stems on the three tracks' playlists, a session range over them and
/// the plugins' keys and Embed's payloads in their VST3 states.
fn patch_session(xml: &str, frames: usize) -> String {
    let mut x = xml.to_string();
    let mut sources = String::from("<Sources>\n");
    let mut regions = String::from("<Regions>\n");
    let region = |i: usize, id: usize| {
        format!(
            r#"<Region name="stem{n}" muted="0" opaque="1" locked="0" video-locked="0" automatic="0" whole-file="1" import="0" external="0" sync-marked="0" left-of-split="0" right-of-split="0" hidden="0" position-locked="0" valid-transients="0" start="0" length="{frames}" position="0" sync-position="0" ancestral-start="0" ancestral-length="0" stretch="1" shift="1" layering-index="0" envelope-active="0" default-fade-in="0" default-fade-out="0" fade-in-active="0" fade-out-active="0" scale-amplitude="1" id="{id}" type="audio" first-edit="nothing" source-0="{s0}" source-1="{s1}" master-source-0="{s0}" master-source-1="{s1}" channels="2"/>"#,
            n = i + 1,
            s0 = 90_000 + 10 * i,
            s1 = 90_001 + 10 * i
        )
    };
    for i in 0..3 {
        for c in 0..2 {
            sources += &format!(
                "<Source name=\"stem{}.wav\" type=\"audio\" flags=\"\" id=\"{}\" channel=\"{c}\" origin=\"\" gain=\"1\"/>\n",
                i + 1,
                90_000 + 10 * i + c
            );
        }
        regions += &(region(i, 91_000 + i) + "\n");
        let head = "<Playlist id=\"";
        let name = format!("name=\"T {}\" type=\"audio\"", i + 1);
        let at = x.find(&name).expect("a playlist per track");
        let open = x[..at].rfind(head).expect("its opening tag");
        let close = open + x[open..].find("/>").expect("an empty playlist");
        let tag = x[open..close].to_string();
        x.replace_range(open..close + 2, &format!("{tag}>\n{}\n</Playlist>", region(i, 92_000 + i)));
    }
    x = x.replacen("<Sources/>", &(sources + "</Sources>"), 1);
    x = x.replacen("<Regions/>", &(regions + "</Regions>"), 1);
    x = x.replacen(
        "<Locations/>",
        &format!("<Locations>\n<Location id=\"93000\" name=\"session\" start=\"0\" end=\"{frames}\" flags=\"IsSessionRange\" locked=\"0\" timestamp=\"0\" cue=\"0\"/>\n</Locations>"),
        1,
    );
    x = x.replacen("session-range-is-free=\"1\"", "session-range-is-free=\"0\"", 1);
    let mut embeds = 0;
    x = map_chunks(&x, |mut state| {
        if state["fields"].get("keys").is_some() {
            let ring: Vec<Value> = MARKED.iter().map(|(n, h, _)| json!({"name": n, "hex": h})).collect();
            state["fields"]["keys"] = Value::String(serde_json::to_string(&ring).unwrap());
        } else {
            let (n, h, p) = MARKED[embeds];
            embeds += 1;
            state["fields"]["key"] = Value::String(json!({"name": n, "hex": h}).to_string());
            state["params"]["payload"] = json!({"i32": p});
        }
        state
    });
    assert_eq!(embeds, 2, "two Embed states");
    x
}

/// Rewrites every plugin's VST3 state (`<chunk>`: base64 of a VST3 preset stream whose component
/// state is nice-plug's JSON) through `f`.
fn map_chunks(xml: &str, mut f: impl FnMut(Value) -> Value) -> String {
    let mut out = String::new();
    let mut rest = xml;
    while let Some(a) = rest.find("<chunk>") {
        let b = a + rest[a..].find("</chunk>").expect("closed chunk");
        out += &rest[..a + 7];
        let bytes = base64::engine::general_purpose::STANDARD.decode(rest[a + 7..b].trim()).unwrap();
        out += &base64::engine::general_purpose::STANDARD.encode(preset_with(&bytes, f(preset_state(&bytes))));
        rest = &rest[b..];
    }
    out + rest
}

/// The component state of a VST3 preset stream: "VST3", version, class id (32 chars), offset of
/// the chunk list (i64), then the state.
fn preset_state(bytes: &[u8]) -> Value {
    assert_eq!(&bytes[..4], b"VST3");
    let list = i64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[48..list]).unwrap()
}

/// The preset stream with `state` as its component state and an empty controller state.
fn preset_with(bytes: &[u8], state: Value) -> Vec<u8> {
    let body = serde_json::to_vec(&state).unwrap();
    let list = (48 + body.len()) as i64;
    let mut v = bytes[..40].to_vec();
    v.extend(list.to_le_bytes());
    v.extend(&body);
    v.extend(b"List");
    v.extend(2i32.to_le_bytes());
    v.extend(b"Comp");
    v.extend(48i64.to_le_bytes());
    v.extend((body.len() as i64).to_le_bytes());
    v.extend(b"Cont");
    v.extend(list.to_le_bytes());
    v.extend(0i64.to_le_bytes());
    v
}

/// Every plugin state in a session file, in file order.
fn states(xml: &str) -> Vec<Value> {
    let mut v = Vec::new();
    map_chunks(xml, |s| {
        v.push(s.clone());
        s
    });
    v
}

/// A snapshot of `snapshot` with the named processors deactivated.
fn deactivated(dir: &Path, snapshot: &str, name: &str, plugin: &str) {
    let x = std::fs::read_to_string(dir.join(format!("{snapshot}.ardour"))).unwrap();
    let from = format!("name=\"{plugin}\" active=\"1\"");
    assert!(x.contains(&from), "{plugin} is not in {snapshot}");
    std::fs::write(dir.join(format!("{name}.ardour")), x.replace(&from, &format!("name=\"{plugin}\" active=\"0\""))).unwrap();
}

fn export(a: &Ardour, home: &Path, dir: &Path, snapshot: &str, results: &Path) -> (Vec<Vec<f32>>, f64) {
    let out = home.join(format!("{snapshot}.wav"));
    let t0 = std::time::Instant::now();
    run(
        home,
        Command::new(&a.export).args(["-b", "float", "-o"]).arg(&out).arg(dir).arg(snapshot).env("STEMMARK_DETECT_RESULTS", results),
        600,
    );
    let secs = t0.elapsed().as_secs_f64();
    let r = audio::read(&out).unwrap();
    assert_eq!((r.rate, r.channels.len()), (RATE, 2));
    (r.channels, secs)
}

fn snr_db(reference: &[Vec<f32>], x: &[Vec<f32>]) -> f64 {
    let (mut s, mut e) = (0f64, 0f64);
    for (r, y) in reference.iter().zip(x) {
        for (&a, &b) in r.iter().zip(y) {
            s += (a as f64).powi(2);
            e += (a as f64 - b as f64).powi(2);
        }
    }
    10.0 * (s / e.max(1e-30)).log10()
}

/// (key, payload) of every payload a report found, sorted.
fn found(report: &Value) -> Vec<(String, u64)> {
    let mut v: Vec<_> =
        report["found"].as_array().unwrap().iter().map(|f| (f["key"].as_str().unwrap().to_string(), f["payload"].as_u64().unwrap())).collect();
    v.sort();
    v
}

fn cli(mix: &[Vec<f32>], align: Alignment) -> Value {
    let keys: Vec<Key> = MARKED.iter().map(|(n, h, _)| Key::from_hex(h, *n).unwrap()).collect();
    let r = stemmark_offline::cmd::detect::analyse(
        Path::new("export.wav"),
        &Audio::new(RATE, mix.to_vec()),
        &keys,
        &workspace_root().join("models"),
        Provider::Cpu,
        align,
        true,
        &mut |_| {},
        &mut |_, _| {},
    )
    .unwrap();
    serde_json::to_value(&r).unwrap()
}

#[test]
#[ignore = "opt-in (needs Ardour 7: apt-get install ardour) and not green yet: see the module doc"]
fn ardour_session_embeds_both_stems_compensates_latency_and_detect_reads_the_export() {
    let a = ardour();
    let bundle = stemmark_tests::fixtures::bundle("bundled", "cargo xtask bundle stemmark-plugin --release").with_extension("vst3");
    assert!(bundle.is_dir(), "{} is missing: build it with `cargo xtask bundle stemmark-plugin --release`", bundle.display());
    runtime::init(None, &[]).expect("ONNX Runtime (run `cargo xtask setup`)");
    let home = tempfile::tempdir().unwrap();
    // STEMMARK_KEEP_ARDOUR=1 keeps the session, renders and logs for a look afterwards.
    let home = if std::env::var_os("STEMMARK_KEEP_ARDOUR").is_some() { home.keep() } else { home.path().to_path_buf() };
    let home = home.as_path();
    std::fs::create_dir_all(home.join(".vst3")).unwrap();
    std::os::unix::fs::symlink(&bundle, home.join(".vst3/Stemmark.vst3")).unwrap();
    // Ardour's scanner writes the plugin cache that the headless tools read (they do not scan).
    run(home, Command::new(&a.scanner).arg("-f").arg(home.join(".vst3/Stemmark.vst3")).env("LD_LIBRARY_PATH", &a.lib), 300);

    // Ardour names the interchange folder after the session folder: keep them one name.
    let dir = home.join(SESSION);
    let lua = |name: &str, text: &str| {
        let p = home.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let build = lua("build.lua", BUILD_LUA);
    assert!(run(home, Command::new(&a.lua).arg(&build).arg(&dir).arg(SESSION), 300).contains("built"));

    let stems = [stem("elvish-theme.ogg", 7, LEVELS[0]), stem("transience.ogg", 9, LEVELS[1]), stem("love_theme.ogg", 11, LEVELS[2])];
    let files = dir.join("interchange").join(SESSION).join("audiofiles");
    std::fs::create_dir_all(&files).unwrap();
    for (i, s) in stems.iter().enumerate() {
        audio::write_wav(&files.join(format!("stem{}.wav", i + 1)), &Audio::new(RATE, s.clone())).unwrap();
    }
    let frames = SECONDS * RATE as usize;
    let file = dir.join(format!("{SESSION}.ardour"));
    std::fs::write(&file, patch_session(&std::fs::read_to_string(&file).unwrap(), frames)).unwrap();

    // Reopen: latencies as Ardour sees them, and Ardour's own save of the restored states.
    let reopen = lua("reopen.lua", REOPEN_LUA);
    let printed = run(home, Command::new(&a.lua).arg(&reopen).arg(&dir).arg(SESSION), 300);
    let latencies: Vec<(String, String, u64)> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("latency|"))
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
        })
        .collect();
    println!("latency reported to Ardour: {latencies:?}");
    let embed_latency: Vec<u64> = latencies.iter().filter(|l| l.1 == "Stemmark Embed").map(|l| l.2).collect();
    assert_eq!(embed_latency.len(), 2, "{printed}");
    assert!(embed_latency.iter().all(|&l| l == embed_latency[0] && l as usize > BLOCK), "Embed reports a block and more: {latencies:?}");
    assert!(latencies.iter().any(|l| l.0 == "Master" && l.1 == "Stemmark Detect" && l.2 == 0), "{latencies:?}");
    let saved = states(&std::fs::read_to_string(dir.join("reopened.ardour")).unwrap());
    let ring: Value = serde_json::from_str(saved.iter().find_map(|s| s["fields"]["keys"].as_str()).expect("Detect's state")).unwrap();
    assert_eq!(ring, json!(MARKED.iter().map(|(n, h, _)| json!({"name": n, "hex": h})).collect::<Vec<_>>()));
    let embeds: Vec<(Value, i64)> = saved
        .iter()
        .filter_map(|s| Some((serde_json::from_str(s["fields"]["key"].as_str()?).unwrap(), s["params"]["payload"]["i32"].as_i64()?)))
        .collect();
    let want: Vec<(Value, i64)> = MARKED.iter().map(|(n, h, p)| (json!({"name": n, "hex": h}), *p as i64)).collect();
    assert_eq!(embeds, want, "the reopened session restores each Embed's key and payload");

    deactivated(&dir, "reopened", "unmarked", "Stemmark Embed");
    deactivated(&dir, "unmarked", "bare", "Stemmark Detect");
    let results = home.join("results.json");
    let (marked, secs) = export(&a, home, &dir, "reopened", &results);
    let (unmarked, _) = export(&a, home, &dir, "unmarked", &home.join("unused.json"));
    let (bare, _) = export(&a, home, &dir, "bare", &home.join("unused2.json"));
    println!("export of {SECONDS} s with both plugins: {secs:.1} s");

    // Detect never touches the audio. (Compared without the marks: Embed's marks can differ in
    // the last bit between renders, as ONNX Runtime rounds by how many blocks one run takes.)
    if unmarked != bare {
        let first = (0..frames).find(|&i| unmarked[0][i] != bare[0][i] || unmarked[1][i] != bare[1][i]).unwrap();
        panic!("the render differs with Detect on and off from frame {first}: SNR {:.1} dB", snr_db(&bare, &unmarked));
    }
    // Without the marks the render is the plain sum of the stems (Ardour's unity gain and pan).
    let sum: Vec<Vec<f32>> = (0..2).map(|c| (0..frames).map(|i| stems.iter().map(|s| s[c][i]).sum()).collect()).collect();
    let dry_err = sum.iter().zip(&unmarked).flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs())).fold(0f32, f32::max);
    assert!(dry_err < 1e-5, "the unmarked render is not the stems' sum (max difference {dry_err})");
    // Latency compensated: the marked render lines up with the unmarked one, the third track
    // included; 2.2 s of misalignment would leave about 0 dB, the marks alone ~28 dB.
    let snr = snr_db(&unmarked, &marked);
    println!("marked vs unmarked render: SNR {snr:.1} dB");
    assert!(snr > 20.0, "the marked render does not line up with the unmarked one: SNR {snr:.1} dB");

    // Detect's results, written during the export: complete, every block analysed.
    let detect: Value = serde_json::from_str(&std::fs::read_to_string(&results).expect("Detect's results file")).unwrap();
    println!("Detect: {} blocks analysed, {} skipped, found {:?}", detect["blocks_analysed"], detect["blocks_skipped"], found(&detect));
    assert_eq!(detect["complete"], json!(true));
    assert!(detect["blocks_analysed"].as_u64().unwrap() as usize >= SECONDS / 2 - 1, "{}", detect["blocks_analysed"]);
    assert_eq!(detect["blocks_skipped"], json!(0));
    // It reads on the timeline grid, as `stemmark detect --offset 0` does on the render.
    let on_grid = cli(&marked, Alignment::Fixed(0));
    assert_eq!(found(&detect), found(&on_grid), "Detect and `stemmark detect --offset 0` disagree");

    // `stemmark detect` (grid searched) reads both payloads from the render.
    let searched = cli(&marked, Alignment::Search);
    let mut want: Vec<(String, u64)> = MARKED.iter().map(|(n, _, p)| (n.to_string(), *p as u64)).collect();
    want.sort();
    assert_eq!(found(&searched), want, "{searched:#}");
    // Where the marks' grid sits: Ardour 7 gives a latent plugin the timeline position of its
    // output, so Embed's grid lands one latency late on the timeline (a whole block plus the rest).
    let offset = searched["readings"].as_array().unwrap().iter().find(|r| r["path"] == "mix").unwrap()["offset"].as_u64().unwrap() as i64;
    let expect = ((embed_latency[0] as f64 * SAMPLE_RATE as f64 / RATE as f64).round() as i64).rem_euclid(BLOCK as i64);
    println!("grid offset of the marks in the render: {offset} samples at 44.1 kHz (Embed's latency mod one block: {expect})");
    assert!((offset - expect).abs() <= HOP as i64, "grid at {offset}, Embed's latency would put it at {expect}");
}
