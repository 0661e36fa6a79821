//! Stemmark Embed's editor (nice-plug-egui): the key (name and public fingerprint, loaded from a
//! key file or derived from a passphrase — only the derived key is stored), stem label, payload,
//! strength, bypass, and what the worker reports: state, blocks marked, late buffers, provider,
//! time per block, errors. It reads the worker's status (atomics, and strings the audio thread
//! never touches) and writes the persisted key field, which the worker watches.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use nice_plug::context::gui::GuiContext;
use nice_plug_egui::{
    EguiEditor, EguiEditorState, EguiNiceSettings, Frame, NiceEguiApp, RepaintNotifier,
    create_egui_editor, widgets,
};
use stemmark_models::keys::Key;
use stemmark_models::payload::MAX_PAYLOAD;

use crate::params::{EmbedParams, StoredKey};
use crate::worker::Shared;

pub type EmbedEditor = EguiEditor<EmbedApp>;

/// Builds the editor; called once per instance by nice-plug.
pub fn new(params: Arc<EmbedParams>, shared: Arc<Shared>) -> Option<EmbedEditor> {
    let state =
        EguiEditorState::from_size(nice_plug::editor::dpi::LogicalSize::new(460.0, 420.0), 1.0);
    let app = EmbedApp {
        params,
        shared,
        gui: None,
        key_path: String::new(),
        passphrase: String::new(),
        key_name: String::new(),
        payload_text: String::new(),
        message: String::new(),
    };
    create_egui_editor(
        state,
        RepaintNotifier::new(),
        EguiNiceSettings::default().with_tile("Stemmark Embed"),
        app,
    )
}

pub struct EmbedApp {
    params: Arc<EmbedParams>,
    shared: Arc<Shared>,
    gui: Option<GuiContext>,
    key_path: String,
    passphrase: String,
    key_name: String,
    payload_text: String,
    message: String,
}

impl EmbedApp {
    fn set_key(&mut self, key: Result<Key, String>) {
        match key {
            Ok(k) => {
                self.message = format!("key \"{}\" ({}) set", k.name(), k.fingerprint());
                if let Ok(mut stored) = self.params.key.write() {
                    *stored = Some(StoredKey {
                        name: k.name().to_string(),
                        hex: k.hex(),
                    });
                }
                // The passphrase has done its job; do not keep it around.
                self.passphrase.clear();
            }
            Err(e) => self.message = e,
        }
    }
}

impl NiceEguiApp for EmbedApp {
    fn build(
        &mut self,
        _egui_ctx: egui::Context,
        gui: GuiContext,
        _frame: &mut Frame,
    ) -> Result<(), nice_plug_egui::baseview::HandlerError> {
        self.gui = Some(gui);
        Ok(())
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut Frame) {
        let shared = self.shared.clone();
        let status = &shared.status;
        let text = status.text();
        ui.heading("Stemmark Embed");
        ui.separator();

        // Key.
        let key = self.params.key.read().ok().and_then(|k| k.clone());
        match key
            .as_ref()
            .and_then(|k| Key::from_hex(&k.hex, k.name.clone()))
        {
            Some(k) => ui.label(format!(
                "Key: \"{}\"  fingerprint {}",
                k.name(),
                k.fingerprint()
            )),
            None => ui.colored_label(
                egui::Color32::YELLOW,
                "no key: audio passes through (delayed)",
            ),
        };
        ui.horizontal(|ui| {
            ui.label("Key file");
            ui.text_edit_singleline(&mut self.key_path);
            if ui.button("Load").clicked() {
                let k = Key::load(std::path::Path::new(self.key_path.trim()))
                    .map_err(|e| e.to_string());
                self.set_key(k);
            }
        });
        ui.horizontal(|ui| {
            ui.label("Passphrase");
            ui.add(
                egui::TextEdit::singleline(&mut self.passphrase)
                    .password(true)
                    .desired_width(120.0),
            );
            ui.label("name");
            ui.add(egui::TextEdit::singleline(&mut self.key_name).desired_width(80.0));
            if ui.button("Derive").clicked() && !self.passphrase.is_empty() {
                let name = if self.key_name.trim().is_empty() {
                    "stem"
                } else {
                    self.key_name.trim()
                };
                let k = Key::from_passphrase(&self.passphrase, name).map_err(|e| e.to_string());
                self.set_key(k);
            }
        });
        if !self.message.is_empty() {
            ui.label(&self.message);
        }
        ui.separator();

        // Stem label and parameters.
        ui.horizontal(|ui| {
            ui.label("Stem label");
            if let Ok(mut label) = self.params.label.write() {
                ui.text_edit_singleline(&mut *label);
            }
        });
        if let Some(gui) = &self.gui {
            let setter = gui.param_setter();
            ui.horizontal(|ui| {
                ui.label("Payload");
                ui.add(widgets::ParamSlider::for_param(
                    &self.params.payload,
                    &setter,
                ));
                ui.add(
                    egui::TextEdit::singleline(&mut self.payload_text)
                        .desired_width(80.0)
                        .hint_text("number"),
                );
                if ui.button("Set").clicked() {
                    match parse_payload(&self.payload_text) {
                        Some(v) => {
                            setter.begin_set_parameter(&self.params.payload);
                            setter.set_parameter(&self.params.payload, v as i32);
                            setter.end_set_parameter(&self.params.payload);
                            self.message.clear();
                        }
                        None => {
                            self.message =
                                format!("payload: a number 0..={MAX_PAYLOAD} (or 0x… hex)")
                        }
                    }
                }
            });
            ui.horizontal(|ui| {
                ui.label("Strength");
                ui.add(widgets::ParamSlider::for_param(
                    &self.params.strength,
                    &setter,
                ));
            });
            ui.horizontal(|ui| {
                ui.label("Bypass");
                ui.add(widgets::ParamSlider::for_param(
                    &self.params.bypass,
                    &setter,
                ));
            });
        }
        ui.horizontal(|ui| {
            ui.label("Provider");
            if let Ok(mut p) = self.params.provider.write() {
                egui::ComboBox::from_id_salt("provider")
                    .selected_text(p.to_uppercase())
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut *p, "cpu".to_string(), "CPU");
                        ui.selectable_value(&mut *p, "cuda".to_string(), "CUDA");
                    });
            }
            ui.label("(applies on the next activation)");
        });
        ui.separator();

        // What the worker reports.
        let latency = status.latency.load(Ordering::Relaxed);
        egui::Grid::new("status").num_columns(2).show(ui, |ui| {
            ui.label("State");
            ui.label(status.state().label());
            ui.end_row();
            ui.label("Running on");
            ui.label(if text.provider.is_empty() {
                "-"
            } else {
                &text.provider
            });
            ui.end_row();
            ui.label("Blocks marked");
            ui.label(status.blocks_marked.load(Ordering::Relaxed).to_string());
            ui.end_row();
            ui.label("Late buffers (dry)");
            ui.label(status.late_buffers.load(Ordering::Relaxed).to_string());
            ui.end_row();
            ui.label("Time per block");
            ui.label(format!(
                "{:.1} ms",
                status.last_block_us.load(Ordering::Relaxed) as f64 / 1000.0
            ));
            ui.end_row();
            ui.label("Latency");
            ui.label(format!("{latency} samples"));
            ui.end_row();
            ui.label("Models");
            ui.label(&text.models);
            ui.end_row();
        });
        if !text.error.is_empty() {
            ui.colored_label(egui::Color32::LIGHT_RED, &text.error);
        }
        // Counters move while audio runs.
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(250));
    }

    fn editor_closed(&mut self) {
        self.gui = None;
    }
}

/// A payload typed as decimal or `0x` hex, within the 24-bit range.
fn parse_payload(s: &str) -> Option<u32> {
    let s = s.trim();
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok()?,
        None => s.parse().ok()?,
    };
    (v <= MAX_PAYLOAD).then_some(v)
}
