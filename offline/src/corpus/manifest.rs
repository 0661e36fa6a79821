//! What the corpus holds: per-item records, the fixed split, and the manifest assembled from them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Fraction of split groups that go to validation.
pub const VAL_FRACTION: f64 = 0.12;
/// Manifest format version; bump when fields change meaning.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Speech foreground over music background, paired at load time.
    SpeechMusic,
    /// Lead part over the sum of the other parts of one rendered multitrack.
    LeadAccompaniment,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::SpeechMusic => "speech+music",
            Scenario::LeadAccompaniment => "lead+accompaniment",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Validation,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Validation => "validation",
        })
    }
}

/// The split of a group (a speaker/language, a music track, a score or project) is a pure function
/// of its id, so it never changes between builds or machines and a group is never on both sides.
pub fn split_of(group: &str) -> Split {
    let h = Sha256::digest(group.as_bytes());
    let x = u64::from_be_bytes(h[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
    if x < VAL_FRACTION { Split::Validation } else { Split::Train }
}

/// Which stem of a scenario a clip file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Speech,
    Music,
    /// A lead/accompaniment pair: `files` holds [lead, accompaniment], sample-aligned.
    Pair,
}

/// One 20 s clip (or aligned pair of clips) on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clip {
    /// Paths relative to the corpus directory; one file, or [lead, accompaniment] for a pair.
    pub files: Vec<String>,
    pub role: Role,
    pub seconds: f64,
    /// Integrated loudness (LUFS) of each file; `None` when too quiet to gate.
    pub lufs: Vec<Option<f64>>,
}

/// Everything one source item produced; written last, so its presence means the item is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub id: String,
    /// Split group: items sharing a group (e.g. one language's speaker in two packages) share a split.
    pub group: String,
    pub scenario: Scenario,
    pub split: Split,
    /// Debian or PyPI package the material comes from.
    pub package: String,
    pub license: String,
    /// Where in the package it comes from (a path, a corpus path, a project file).
    pub origin: String,
    /// Free-form facts about how it was made (lead part, programs, soundfont, mix check).
    #[serde(default)]
    pub notes: BTreeMap<String, String>,
    pub clips: Vec<Clip>,
}

impl ItemRecord {
    pub fn seconds(&self) -> f64 {
        self.clips.iter().map(|c| c.seconds).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub sample_rate: u32,
    pub clip_samples: usize,
    pub val_fraction: f64,
    /// How the split is computed, for readers who don't open the code.
    pub split_rule: String,
    pub small: bool,
    pub items: Vec<ItemRecord>,
}

impl Manifest {
    pub fn new(small: bool, mut items: Vec<ItemRecord>) -> Self {
        items.sort_by(|a, b| a.id.cmp(&b.id));
        Manifest {
            version: MANIFEST_VERSION,
            sample_rate: stemmark_models::spec::SAMPLE_RATE,
            clip_samples: stemmark_models::spec::CLIP,
            val_fraction: VAL_FRACTION,
            split_rule: format!(
                "validation iff first 8 bytes of sha256(group) as big-endian u64 / u64::MAX < {VAL_FRACTION}"
            ),
            small,
            items,
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a corpus manifest", path.display()))
    }

    /// Writes the manifest atomically (compact JSON, one item per line, so diffs stay readable).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut out = String::from("{");
        let head = serde_json::json!({
            "version": self.version, "sample_rate": self.sample_rate, "clip_samples": self.clip_samples,
            "val_fraction": self.val_fraction, "split_rule": self.split_rule, "small": self.small,
        });
        let head = serde_json::to_string(&head)?;
        out.push_str(&head[1..head.len() - 1]);
        out.push_str(",\n\"items\": [\n");
        for (i, item) in self.items.iter().enumerate() {
            out.push_str(&serde_json::to_string(item)?);
            out.push_str(if i + 1 < self.items.len() { ",\n" } else { "\n" });
        }
        out.push_str("]}\n");
        write_atomic(path, out.as_bytes())
    }

    /// Hours and clip counts per (scenario, role, split).
    pub fn totals(&self) -> BTreeMap<(Scenario, Role, Split), (f64, usize)> {
        let mut t = BTreeMap::new();
        for item in &self.items {
            for c in &item.clips {
                let e = t.entry((item.scenario, c.role, item.split)).or_insert((0.0, 0));
                e.0 += c.seconds / 3600.0;
                e.1 += 1;
            }
        }
        t
    }

    /// [`Self::totals`] as a JSON list of `{scenario, stem, split, hours, clips}`.
    pub fn totals_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .totals()
            .into_iter()
            .map(|((scenario, role, split), (hours, clips))| {
                serde_json::json!({ "scenario": scenario, "stem": role, "split": split, "hours": hours, "clips": clips })
            })
            .collect();
        serde_json::Value::Array(rows)
    }

    pub fn totals_table(&self) -> String {
        let mut s = format!("{:<20} {:<7} {:<10} {:>8} {:>7}\n", "scenario", "stem", "split", "hours", "clips");
        for ((sc, role, split), (h, n)) in self.totals() {
            let role = match role {
                Role::Speech => "speech",
                Role::Music => "music",
                Role::Pair => "pair",
            };
            s.push_str(&format!("{:<20} {:<7} {:<10} {:>8.3} {:>7}\n", sc.to_string(), role, split.to_string(), h, n));
        }
        s
    }
}

/// Writes bytes through a temporary file in the same folder, renamed into place when complete.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".stemmark-")
        .suffix(".tmp")
        .permissions(crate::audio::new_file_permissions())
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| anyhow::anyhow!("cannot move output into {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_fixed_and_roughly_the_fraction() {
        assert_eq!(split_of("lang:fr"), split_of("lang:fr"));
        let val = (0..5000).filter(|i| split_of(&format!("g{i}")) == Split::Validation).count();
        let f = val as f64 / 5000.0;
        assert!((f - VAL_FRACTION).abs() < 0.02, "{f}");
    }
}
