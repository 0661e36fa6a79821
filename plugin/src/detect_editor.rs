//! Stemmark Detect's editor (nice-plug-egui): what was found (payload, key, where, how sure), per
//! path (mix and each separated stem) the best key's reading with a timeline of recent blocks,
//! the key ring (add from a key file or a passphrase; only derived keys are stored), the results
//! file, and the analysis status (lag, skipped blocks, provider, time per block, errors).
//!
//! It reads the worker's published [`Results`] (an `Arc` swapped under a mutex the audio thread
//! never touches) and writes the persisted key ring, which the worker watches; the analysis runs
//! on its own thread, so the editor stays responsive.

use std::sync::Arc;

use egui::Color32;
use nice_plug_egui::{
    EguiEditor, EguiEditorState, EguiNiceSettings, Frame, NiceEguiApp, RepaintNotifier,
    create_egui_editor,
};
use stemmark_models::decision::Verdict;
use stemmark_models::detect_stream::{BlockState, PathReading};
use stemmark_models::keys::Key;

use crate::detect_worker::{DetectShared, Results};
use crate::params::{DetectParams, StoredKey};

pub type DetectEditor = EguiEditor<DetectApp>;

/// Blocks shown in each timeline strip (the most recent ones).
const TIMELINE_BLOCKS: usize = 40;

pub fn new(params: Arc<DetectParams>, shared: Arc<DetectShared>) -> Option<DetectEditor> {
    let state =
        EguiEditorState::from_size(nice_plug::editor::dpi::LogicalSize::new(620.0, 560.0), 1.0);
    let app = DetectApp {
        params,
        shared,
        key_path: String::new(),
        passphrase: String::new(),
        key_name: String::new(),
        message: String::new(),
    };
    create_egui_editor(
        state,
        RepaintNotifier::new(),
        EguiNiceSettings::default().with_tile("Stemmark Detect"),
        app,
    )
}

pub struct DetectApp {
    params: Arc<DetectParams>,
    shared: Arc<DetectShared>,
    key_path: String,
    passphrase: String,
    key_name: String,
    message: String,
}

impl DetectApp {
    fn add_key(&mut self, key: Result<Key, String>) {
        match key {
            Ok(k) => {
                if let Ok(mut ring) = self.params.keys.write() {
                    if ring.iter().any(|s| s.hex == k.hex()) {
                        self.message = format!("key \"{}\" is already on the ring", k.name());
                    } else {
                        self.message = format!("added key \"{}\" ({})", k.name(), k.fingerprint());
                        ring.push(StoredKey { name: k.name().to_string(), hex: k.hex() });
                    }
                }
                self.passphrase.clear();
            }
            Err(e) => self.message = e,
        }
    }

    fn found_panel(ui: &mut egui::Ui, r: &Results) {
        Self::old_format_notes(ui, r);
        if r.found.is_empty() {
            let (text, colour) = if r.blocks_analysed == 0 {
                ("waiting for audio (one 2 s block plus 1 s of context)", Color32::GRAY)
            } else {
                ("no Stemmark watermark found", Color32::from_rgb(230, 180, 80))
            };
            ui.label(egui::RichText::new(text).size(18.0).color(colour));
            return;
        }
        for f in &r.found {
            ui.label(
                egui::RichText::new(format!(
                    "payload {}  ·  key \"{}\"  ·  on {}",
                    f.payload,
                    f.key,
                    f.read_on.join(", ")
                ))
                .size(18.0)
                .color(Color32::from_rgb(110, 220, 120)),
            );
            // A strong mark's rate underflows to 0 in f64, which must not read as "impossible".
            let rate = if f.false_positive_rate < 1e-300 {
                "< 1e-300".to_string()
            } else {
                format!("≤ {:.1e}", f.false_positive_rate)
            };
            ui.label(format!(
                "fingerprint {}  ·  carried by the {} reading  ·  false-positive rate {rate}",
                f.fingerprint, f.carried_by
            ));
        }
    }

    /// A mark written by a build before the payload code (payload format 1) is named, never
    /// read as a payload: say so once per key and payload, with what to do.
    fn old_format_notes(ui: &mut egui::Ui, r: &Results) {
        let mut seen: Vec<(&str, u32)> = Vec::new();
        for x in &r.readings {
            if let Some(p) = x.decision.old_format_payload
                && !seen.contains(&(x.key.as_str(), p))
            {
                seen.push((x.key.as_str(), p));
                ui.colored_label(
                    Color32::from_rgb(230, 180, 80),
                    format!(
                        "key \"{}\" reads an old-format mark (payload {p}, payload format 1) on the {}: written by a Stemmark build before the payload code; mark the stem again",
                        x.key, x.path
                    ),
                );
            }
        }
    }

    /// One row per path: the key with the strongest reading on it.
    fn paths_panel(ui: &mut egui::Ui, r: &Results) {
        let mut paths: Vec<&str> = Vec::new();
        for x in &r.readings {
            if !paths.contains(&x.path) {
                paths.push(x.path);
            }
        }
        egui::Grid::new("paths").num_columns(6).striped(true).show(ui, |ui| {
            for h in ["path", "key", "verdict", "payload", "T", "recent blocks"] {
                ui.label(egui::RichText::new(h).strong());
            }
            ui.end_row();
            for path in paths {
                let best = r
                    .readings
                    .iter()
                    .filter(|x| x.path == path)
                    .max_by(|a, b| a.decision.z.total_cmp(&b.decision.z));
                let Some(x) = best else { continue };
                ui.label(match path {
                    "mix" => "mix (not separated)",
                    stemmark_models::tile::joint::JOINT => "joint (mix + stems)",
                    stem => stem,
                });
                ui.label(&x.key);
                let (verdict, colour) = match x.decision.verdict {
                    Verdict::Found => ("found", Color32::from_rgb(110, 220, 120)),
                    Verdict::Uncertain => ("uncertain", Color32::from_rgb(230, 180, 80)),
                    Verdict::NotFound => ("not found", Color32::GRAY),
                };
                ui.colored_label(colour, verdict);
                ui.label(x.decision.payload.map_or("-".into(), |p| p.to_string()));
                ui.label(format!("{:.1}", x.decision.z));
                timeline(ui, x);
                ui.end_row();
            }
        });
    }
}

/// Coloured squares for the most recent blocks: marked, uncertain (or silent), not marked.
fn timeline(ui: &mut egui::Ui, x: &PathReading) {
    let n = x.blocks.len().min(TIMELINE_BLOCKS);
    let size = egui::vec2(8.0, 12.0);
    let (rect, _) = ui.allocate_exact_size(
        egui::vec2(TIMELINE_BLOCKS as f32 * (size.x + 2.0), size.y),
        egui::Sense::hover(),
    );
    let painter = ui.painter_at(rect);
    for (i, b) in x.blocks[x.blocks.len() - n..].iter().enumerate() {
        let colour = match b {
            BlockState::Marked => Color32::from_rgb(110, 220, 120),
            BlockState::Uncertain => Color32::from_gray(110),
            BlockState::NotMarked => Color32::from_rgb(200, 80, 80),
        };
        let min = rect.min + egui::vec2(i as f32 * (size.x + 2.0), 0.0);
        painter.rect_filled(egui::Rect::from_min_size(min, size), 1.0, colour);
    }
}

impl NiceEguiApp for DetectApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut Frame) {
        let shared = self.shared.clone();
        let r = shared.results();
        ui.heading("Stemmark Detect");
        ui.separator();
        Self::found_panel(ui, &r);
        ui.add_space(6.0);
        Self::paths_panel(ui, &r);
        ui.separator();

        // Key ring.
        ui.label(egui::RichText::new("Key ring").strong());
        let ring = self.params.keys.read().map(|k| k.clone()).unwrap_or_default();
        if ring.is_empty() {
            ui.colored_label(Color32::YELLOW, "no keys: add the keys of the stems to look for");
        }
        let mut remove = None;
        for (i, k) in ring.iter().enumerate() {
            ui.horizontal(|ui| {
                let fp = Key::from_hex(&k.hex, k.name.clone()).map_or("invalid".into(), |k| k.fingerprint());
                ui.label(format!("\"{}\"  {fp}", k.name));
                if ui.small_button("Remove").clicked() {
                    remove = Some(i);
                }
            });
        }
        if let Some(i) = remove
            && let Ok(mut ring) = self.params.keys.write()
            && i < ring.len()
        {
            let k = ring.remove(i);
            self.message = format!("removed key \"{}\"", k.name);
        }
        ui.horizontal(|ui| {
            ui.label("Key file");
            ui.text_edit_singleline(&mut self.key_path);
            if ui.button("Add").clicked() {
                let k = Key::load(std::path::Path::new(self.key_path.trim())).map_err(|e| e.to_string());
                self.add_key(k);
            }
        });
        ui.horizontal(|ui| {
            ui.label("Passphrase");
            ui.add(egui::TextEdit::singleline(&mut self.passphrase).password(true).desired_width(140.0));
            ui.label("name");
            ui.add(egui::TextEdit::singleline(&mut self.key_name).desired_width(90.0));
            if ui.button("Add").clicked() && !self.passphrase.is_empty() {
                let name = if self.key_name.trim().is_empty() { "key" } else { self.key_name.trim() };
                let k = Key::from_passphrase(&self.passphrase, name).map_err(|e| e.to_string());
                self.add_key(k);
            }
        });
        ui.horizontal(|ui| {
            ui.label("Results file");
            if let Ok(mut p) = self.params.results_path.write() {
                ui.add(egui::TextEdit::singleline(&mut *p).hint_text("/path/to/results.json").desired_width(300.0));
                if ui.button("Write now").clicked() {
                    let path = p.trim().to_string();
                    self.message = if path.is_empty() {
                        "name a file first".into()
                    } else {
                        match crate::detect_worker::write_json(std::path::Path::new(&path), &r) {
                            Ok(()) => format!("wrote {path}"),
                            Err(e) => format!("cannot write {path}: {e}"),
                        }
                    };
                }
            }
        });
        if !self.message.is_empty() {
            ui.label(&self.message);
        }
        ui.separator();

        // Analysis status.
        egui::Grid::new("status").num_columns(4).show(ui, |ui| {
            ui.label("State");
            ui.label(if r.complete { "finished: the whole render is analysed" } else { shared.state().label() });
            ui.label("Running on");
            ui.label(if r.provider.is_empty() { "-" } else { &r.provider });
            ui.end_row();
            ui.label("Blocks analysed");
            ui.label(r.blocks_analysed.to_string());
            ui.label("Skipped (behind real time)");
            ui.label(r.blocks_skipped.to_string());
            ui.end_row();
            ui.label("Analysis lag");
            ui.label(format!("{:.1} s", r.lag_seconds));
            ui.label("Time per block");
            ui.label(format!("{:.0} ms", r.ms_per_block));
            ui.end_row();
        });
        if let Some(e) = &r.error {
            ui.colored_label(Color32::LIGHT_RED, e);
        }
        ui.ctx().request_repaint_after(std::time::Duration::from_millis(250));
    }
}
