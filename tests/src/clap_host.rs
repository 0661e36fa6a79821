//! A small CLAP host on clack-host for the plugin tests: load a bundle, instantiate a plugin,
//! switch render mode, query latency, save/load state, and run audio through it on an audio
//! thread in varying buffer sizes, the way a DAW does.
//!
//! It needs the test crate's dev-dependencies (clack-host, clack-extensions), so test files
//! include it with `#[path = "../src/clap_host.rs"] mod clap_host;` rather than through the
//! library.

#![allow(dead_code)]

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};
use clack_extensions::latency::PluginLatency;
use clack_extensions::render::{PluginRender, RenderMode};
use clack_extensions::state::PluginState;
use clack_host::events::event_types::{ParamValueEvent, TransportEvent, TransportFlags};
use clack_host::events::io::{EventBuffer, InputEvents, OutputEvents};
use clack_host::events::{EventFlags, EventHeader, Pckn};
use clack_host::prelude::*;
use clack_host::utils::ClapId;
use clack_host::utils::FixedPoint;

pub struct TestHost;

pub struct TestShared;

impl SharedHandler<'_> for TestShared {
    // One instance processing a fixed script needs none of these.
    fn request_restart(&self) {}
    fn request_process(&self) {}
    fn request_callback(&self) {}
}

// nice-plug opens its editor only for hosts that offer the gui extension.
impl clack_extensions::gui::HostGuiImpl for TestShared {
    fn resize_hints_changed(&self) {}
    fn request_resize(&self, _size: clack_extensions::gui::GuiSize) -> Result<(), HostError> {
        Ok(())
    }
    fn request_show(&self) -> Result<(), HostError> {
        Ok(())
    }
    fn request_hide(&self) -> Result<(), HostError> {
        Ok(())
    }
    fn closed(&self, _was_destroyed: bool) {}
}

impl HostHandlers for TestHost {
    type Shared<'a> = TestShared;
    type MainThread<'a> = ();
    type AudioProcessor<'a> = ();

    fn declare_extensions(builder: &mut HostExtensions<Self>, _shared: &Self::Shared<'_>) {
        builder.register::<clack_extensions::gui::HostGui>();
    }
}

pub type Instance = PluginInstance<TestHost>;

/// Loads a `.clap` bundle.
pub fn load(bundle: &Path) -> Result<PluginEntry> {
    // SAFETY: loading a CLAP library runs its code; this is the library under test.
    unsafe { PluginEntry::load(bundle) }
        .map_err(|e| anyhow!("could not load {}: {e}", bundle.display()))
}

/// Creates an instance of plugin `id`.
pub fn instantiate(entry: &PluginEntry, id: &str) -> Result<Instance> {
    let host_info = HostInfo::new("stemmark-tests", "Stemmark", "https://example.org", "0.1.0")
        .map_err(|e| anyhow!("host info: {e}"))?;
    let id_c = std::ffi::CString::new(id)?;
    PluginInstance::<TestHost>::new(|_| TestShared, |_| (), entry, &id_c, &host_info)
        .map_err(|e| anyhow!("{id}: instantiate: {e}"))
}

/// Tells the plugin it renders offline (it may then wait for its worker) or in real time.
pub fn set_render_mode(instance: &mut Instance, offline: bool) -> Result<()> {
    let handle = instance.plugin_handle();
    let render: PluginRender = handle
        .get_extension()
        .context("the plugin has no render extension")?;
    let mode = if offline {
        RenderMode::Offline
    } else {
        RenderMode::Realtime
    };
    render
        .set(&handle, mode)
        .map_err(|e| anyhow!("render mode: {e}"))
}

/// The latency the plugin reports now, in samples.
pub fn latency(instance: &mut Instance) -> Result<u32> {
    let handle = instance.plugin_handle();
    let latency: PluginLatency = handle
        .get_extension()
        .context("the plugin has no latency extension")?;
    Ok(latency.get(&handle))
}

pub fn save_state(instance: &mut Instance) -> Result<Vec<u8>> {
    let handle = instance.plugin_handle();
    let state: PluginState = handle
        .get_extension()
        .context("the plugin has no state extension")?;
    let mut out = Vec::new();
    state
        .save(&handle, &mut out)
        .map_err(|e| anyhow!("state save: {e}"))?;
    Ok(out)
}

pub fn load_state(instance: &mut Instance, bytes: &[u8]) -> Result<()> {
    let handle = instance.plugin_handle();
    let state: PluginState = handle
        .get_extension()
        .context("the plugin has no state extension")?;
    let mut reader = bytes;
    state
        .load(&handle, &mut reader)
        .map_err(|e| anyhow!("state load: {e}"))
}

/// How the host cuts the audio into buffers.
#[derive(Clone, Debug)]
pub enum Sizes {
    /// Cycles through these sizes.
    Cycle(Vec<usize>),
    /// Uniformly random in `1..=max`, different every call (xorshift from `seed`).
    Random { seed: u64, max: usize },
}

impl Sizes {
    fn max(&self) -> usize {
        match self {
            Sizes::Cycle(v) => v.iter().copied().max().unwrap_or(1),
            Sizes::Random { max, .. } => *max,
        }
    }
}

/// A child job's `"sizes"`: `{"seed", "max"}` for random sizes, else a fixed awkward cycle.
pub fn sizes_from_job(v: &serde_json::Value) -> Sizes {
    match v {
        serde_json::Value::Object(s) => Sizes::Random {
            seed: s["seed"].as_u64().unwrap_or(1),
            max: s["max"].as_u64().unwrap_or(4096) as usize,
        },
        _ => Sizes::Cycle(vec![512, 1, 4096, 37, 1000]),
    }
}

/// What [`run`] returns.
pub struct Run {
    /// Output, as long as the input (with `calls`, the first pass over the input).
    pub output: Vec<Vec<f32>>,
    /// Latency the plugin reported after activation.
    pub latency: u32,
    /// Process calls made.
    pub calls: usize,
}

/// Activates `instance` at `sample_rate`, processes `input` (planar) on an audio thread in
/// buffers cut by `sizes`, then stops and deactivates it. Without `calls`, the input is processed
/// once; with `calls`, exactly that many process calls are made, going round the input.
pub fn run(
    instance: &mut Instance,
    sample_rate: f64,
    sizes: &Sizes,
    input: &[Vec<f32>],
    calls: Option<usize>,
) -> Result<Run> {
    run_with_transport(
        instance,
        sample_rate,
        sizes,
        input,
        calls,
        &Script::default(),
    )
}

/// A playing transport for the call that starts at input frame `at`: `timeline` lists
/// `(input frame, timeline sample)` pairs where the timeline jumps (seek, loop); between them it
/// advances with the audio. Calls never straddle a jump. Empty: no transport at all.
fn transport_at(timeline: &[(usize, i64)], at: usize, rate: f64) -> Option<TransportEvent> {
    let &(from, pos) = timeline.iter().rev().find(|(f, _)| *f <= at)?;
    let samples = pos + (at - from) as i64;
    let zero = FixedPoint::from_int(0);
    Some(TransportEvent {
        header: EventHeader::new_core(0, EventFlags::empty()),
        flags: TransportFlags::IS_PLAYING | TransportFlags::HAS_SECONDS_TIMELINE,
        song_pos_beats: zero,
        song_pos_seconds: FixedPoint::from_float(samples as f64 / rate),
        tempo: 120.0,
        tempo_inc: 0.0,
        loop_start_beats: zero,
        loop_end_beats: zero,
        loop_start_seconds: zero,
        loop_end_seconds: zero,
        bar_start: zero,
        bar_number: 0,
        time_signature_numerator: 4,
        time_signature_denominator: 4,
    })
}

/// What happens besides audio: the transport (see [`transport_at`]) and parameter automation,
/// `(input frame, CLAP parameter id, plain value)`, sent with the call holding that frame.
#[derive(Clone, Debug, Default)]
pub struct Script {
    pub timeline: Vec<(usize, i64)>,
    pub automation: Vec<(usize, u32, f64)>,
}

/// nice-plug's CLAP parameter id for a parameter's string id.
pub fn nice_param_id(id: &str) -> u32 {
    id.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
        & !(1 << 31)
}

/// [`run`] with a [`Script`].
pub fn run_with_transport(
    instance: &mut Instance,
    sample_rate: f64,
    sizes: &Sizes,
    input: &[Vec<f32>],
    calls: Option<usize>,
    script: &Script,
) -> Result<Run> {
    let timeline = &script.timeline[..];
    let mut events = EventBuffer::with_capacity(16);
    let max_frames = sizes.max();
    let config = PluginAudioConfiguration {
        sample_rate,
        min_frames_count: 1,
        max_frames_count: max_frames as u32,
    };
    let processor = instance
        .activate(|_, _| (), config)
        .map_err(|e| anyhow!("activate: {e}"))?;
    // nice-plug reports latency changes to the host on the main thread; the value itself is
    // readable at once.
    instance.call_on_main_thread_callback();
    let reported = latency(instance)?;

    let channels = input.len();
    let frames = input[0].len();
    let mut output = vec![vec![0.0f32; frames]; channels];
    // Everything the audio thread touches is allocated here, as a real host would.
    let mut in_bufs = vec![vec![0.0f32; max_frames]; channels];
    let mut out_bufs = in_bufs.clone();
    let mut in_ports = AudioPorts::with_capacity(channels, 1);
    let mut out_ports = AudioPorts::with_capacity(channels, 1);

    let audio_thread = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<_> {
                let mut processor = processor
                    .start_processing()
                    .map_err(|e| anyhow!("start_processing: {e}"))?;
                let mut pos = 0;
                let mut call = 0usize;
                let mut seed = match sizes {
                    Sizes::Random { seed, .. } => (*seed).max(1),
                    Sizes::Cycle(_) => 1,
                };
                while match calls {
                    Some(c) => call < c,
                    None => pos < frames,
                } {
                    let want = match sizes {
                        Sizes::Cycle(v) => v[call % v.len()],
                        Sizes::Random { max, .. } => {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            1 + (seed % *max as u64) as usize
                        }
                    };
                    let mut n = match calls {
                        Some(_) => want,
                        None => want.min(frames - pos),
                    };
                    if let Some(&(jump, _)) = timeline.iter().find(|(f, _)| *f > pos) {
                        n = n.min(jump - pos);
                    }
                    let transport = transport_at(timeline, pos, sample_rate);
                    events.clear();
                    for &(at, id, value) in &script.automation {
                        if at >= pos && at < pos + n {
                            let id = ClapId::new(id);
                            events.push(&ParamValueEvent::new(
                                (at - pos) as u32,
                                id,
                                Pckn::match_all(),
                                value,
                            ));
                        }
                    }
                    call += 1;
                    for (buf, src) in in_bufs.iter_mut().zip(input) {
                        for (i, b) in buf[..n].iter_mut().enumerate() {
                            *b = src[(pos + i) % frames];
                        }
                    }
                    // Poison, so an output the plugin never wrote cannot pass as audio.
                    for buf in &mut out_bufs {
                        buf[..n].fill(f32::NAN);
                    }
                    let inputs = in_ports.with_input_buffers([AudioPortBuffer {
                        latency: 0,
                        channels: AudioPortBufferType::f32_input_only(
                            in_bufs
                                .iter_mut()
                                .map(|b| InputChannel::variable(&mut b[..n])),
                        ),
                    }]);
                    let mut outputs = out_ports.with_output_buffers([AudioPortBuffer {
                        latency: 0,
                        channels: AudioPortBufferType::f32_output_only(
                            out_bufs.iter_mut().map(|b| &mut b[..n]),
                        ),
                    }]);
                    processor
                        .process(
                            &inputs,
                            &mut outputs,
                            &InputEvents::from_buffer(&events),
                            &mut OutputEvents::void(),
                            Some(pos as u64),
                            transport.as_ref(),
                        )
                        .map_err(|e| anyhow!("process at frame {pos} ({n} frames): {e}"))?;
                    for (dst, buf) in output.iter_mut().zip(&out_bufs) {
                        let keep = n.min(frames.saturating_sub(pos));
                        if keep > 0 {
                            dst[pos..pos + keep].copy_from_slice(&buf[..keep]);
                        }
                    }
                    pos += n;
                }
                Ok((processor.stop_processing(), call))
            })
            .join()
    });
    let (processor, calls) = match audio_thread {
        Ok(result) => result.context("audio thread")?,
        Err(_) => bail!("the audio thread panicked"),
    };
    instance.deactivate(processor);
    // Serve anything the plugin queued for the main thread.
    instance.call_on_main_thread_callback();
    Ok(Run {
        output,
        latency: reported,
        calls,
    })
}

/// A nice-plug CLAP state is its JSON preceded by the JSON's length (u64, little-endian).
pub fn nice_state_json(bytes: &[u8]) -> Result<serde_json::Value> {
    let body = bytes
        .get(8..)
        .context("state shorter than its length prefix")?;
    serde_json::from_slice(body).context("state is not JSON")
}

/// The inverse of [`nice_state_json`].
pub fn nice_state_bytes(state: &serde_json::Value) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(state)?;
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(out)
}

/// Writes 8-bit RGB rows (`width` × `height`) as a PNG file, atomically (temp file + rename).
pub fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    anyhow::ensure!(
        rgb.len() == (width * height * 3) as usize,
        "{} bytes is not a {width}×{height} RGB image",
        rgb.len()
    );
    let tmp = path.with_extension("png.part");
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut enc = png::Encoder::new(file, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()?.write_image_data(rgb)?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Opens the plugin's editor (CLAP gui, embedded X11) inside a new top-level window on
/// `display`, lets it draw for `settle`, and returns the window's pixels as RGB rows
/// (`width`, `height`, data). The editor is destroyed again before returning.
pub fn editor_screenshot(
    instance: &mut Instance,
    display: &str,
    settle: std::time::Duration,
) -> Result<(u32, u32, Vec<u8>)> {
    use clack_extensions::gui::{GuiApiType, GuiConfiguration, PluginGui, Window};
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::{ConnectionExt, CreateWindowAux, ImageFormat, WindowClass};

    let handle = instance.plugin_handle();
    let gui: PluginGui = handle
        .get_extension()
        .context("the plugin has no gui extension")?;
    let config = GuiConfiguration {
        api_type: GuiApiType::X11,
        is_floating: false,
    };
    ensure!(
        gui.is_api_supported(&handle, config),
        "the plugin does not support embedded X11"
    );
    gui.create(&handle, config)
        .map_err(|e| anyhow!("gui create: {e}"))?;
    let size = gui.get_size(&handle).context("the editor has no size")?;
    let (w, h) = (size.width.max(1), size.height.max(1));

    let (conn, screen) =
        x11rb::connect(Some(display)).map_err(|e| anyhow!("X display {display}: {e}"))?;
    let root = conn.setup().roots[screen].root;
    let win = conn.generate_id()?;
    conn.create_window(
        x11rb::COPY_DEPTH_FROM_PARENT,
        win,
        root,
        0,
        0,
        w as u16,
        h as u16,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new().background_pixel(0),
    )?;
    conn.map_window(win)?;
    // A round trip, not just a flush: the server must have made the window before the plugin's
    // own connection asks to reparent into it (a flush alone loses that race now and then).
    conn.get_input_focus()?.reply()?;
    // SAFETY: `win` is a live X11 window on the display the plugin will connect to.
    unsafe { gui.set_parent(&handle, Window::from_x11_handle(win as _)) }
        .map_err(|e| anyhow!("gui set_parent: {e}"))?;
    gui.show(&handle).map_err(|e| anyhow!("gui show: {e}"))?;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < settle {
        instance.call_on_main_thread_callback();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let handle = instance.plugin_handle();
    let image = conn
        .get_image(ImageFormat::Z_PIXMAP, root, 0, 0, w as u16, h as u16, !0)?
        .reply()?;
    let _ = gui.hide(&handle);
    gui.destroy(&handle);
    conn.destroy_window(win)?;
    conn.flush()?;
    // 32 bits per pixel, BGRX on little-endian X servers.
    let rgb = image
        .data
        .chunks_exact(4)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    Ok((w, h, rgb))
}
