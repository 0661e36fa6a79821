//! Parameters of both plugins. Parameter ids are stable strings (they key presets and automation):
//! never rename an `#[id]`, only the field or the display name.

use std::sync::RwLock;

use nice_plug::prelude::*;
use stemmark_models::payload::MAX_PAYLOAD;

/// The stem's key as saved with the session: the 128-bit secret in hex and its name. The
/// passphrase it may have come from is never stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredKey {
    pub name: String,
    pub hex: String,
}

/// Stemmark Embed's parameters.
#[derive(Params)]
pub struct EmbedParams {
    /// Host-visible bypass (flagged as the plugin's bypass so hosts map their bypass button to
    /// it). Once Embed reports latency, bypass must still delay the dry signal by that latency.
    #[id = "bypass"]
    pub bypass: BoolParam,

    /// Watermark strength: a multiplier on the embedder's mask, 0 (off) to 2, 1 is the trained
    /// operating point.
    #[id = "strength"]
    pub strength: FloatParam,

    /// The 24-bit payload written into every block of this stem. nice-plug carries parameter
    /// values as normalised f32; 24 bits is exactly what an f32 mantissa holds, so every value
    /// in 0..=2^24-1 round-trips through the host without loss (checked exhaustively).
    #[id = "payload"]
    pub payload: IntParam,

    /// The key, persisted in the plugin state (never the passphrase). The worker watches it.
    #[persist = "key"]
    pub key: RwLock<Option<StoredKey>>,

    /// The stem's label, shown in the editor and saved with the session.
    #[persist = "label"]
    pub label: RwLock<String>,

    /// "cpu" or "cuda"; CUDA falls back to the CPU with a message when unavailable.
    #[persist = "provider"]
    pub provider: RwLock<String>,
}

impl Default for EmbedParams {
    fn default() -> Self {
        Self {
            bypass: BoolParam::new("Bypass", false)
                .make_bypass()
                .with_value_to_string(formatters::v2s_bool_bypass())
                .with_string_to_value(formatters::s2v_bool_bypass()),
            strength: FloatParam::new("Strength", 1.0, FloatRange::Linear { min: 0.0, max: 2.0 })
                .with_smoother(SmoothingStyle::Linear(50.0))
                .with_step_size(0.01)
                .with_value_to_string(formatters::v2s_f32_rounded(2)),
            // The payload changes the message, so it is not something to automate mid-song.
            payload: IntParam::new(
                "Payload",
                0,
                IntRange::Linear {
                    min: 0,
                    max: MAX_PAYLOAD as i32,
                },
            )
            .non_automatable(),
            key: RwLock::new(None),
            label: RwLock::new(String::new()),
            provider: RwLock::new("cpu".into()),
        }
    }
}

/// Stemmark Detect's parameters. Detect never alters audio, so it has no bypass of its own
/// (nice-plug adds a host bypass for VST3 when a plugin has none) and nothing to automate: its
/// settings are the key ring and where results go, saved with the session.
#[derive(Params)]
pub struct DetectParams {
    /// The keys to read with (names and secrets; never passphrases). The worker watches
    /// `keys_changed` to rebuild its analysis.
    #[persist = "keys"]
    pub keys: RwLock<Vec<StoredKey>>,

    /// Results are written to this JSON file after every analysed block (empty: only when
    /// `STEMMARK_DETECT_RESULTS` names a file).
    #[persist = "results_path"]
    pub results_path: RwLock<String>,

    /// "cpu" or "cuda"; CUDA falls back to the CPU with a message when unavailable.
    #[persist = "provider"]
    pub provider: RwLock<String>,
}

impl Default for DetectParams {
    fn default() -> Self {
        Self {
            keys: RwLock::new(Vec::new()),
            results_path: RwLock::new(String::new()),
            provider: RwLock::new("cpu".into()),
        }
    }
}
