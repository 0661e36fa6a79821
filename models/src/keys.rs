//! Secret keys: generation, passphrase derivation, the key file format, and everything derived
//! from a key (the network's key vector, the bit scrambler, the per-block masks, a public
//! fingerprint).
//!
//! Key file format (TOML, one key per file, like audiowmark's named key files):
//!
//! ```toml
//! # Stemmark watermark key. Keep it secret: whoever holds it can read this mark.
//! format = "stemmark-key-1"
//! name = "vocals"
//! key = "00112233445566778899aabbccddeeff"   # 128 bits, hex
//! ```
//!
//! All derived values use HKDF-SHA256 with distinct `info` labels, so knowing one (for example
//! the fingerprint shown in the editor) reveals nothing about the others.

use std::path::Path;

use hkdf::Hkdf;
use sha2::Sha256;

use crate::spec::{KEY_BYTES, KEY_DIM, MASK_PERIOD, MESSAGE_BITS};

const FORMAT: &str = "stemmark-key-1";
/// Salt of the passphrase KDF: fixed, so the same passphrase gives the same key everywhere.
const PASSPHRASE_SALT: &[u8] = b"stemmark passphrase key v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write key file {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not a Stemmark key file: {why}")]
    Format { path: String, why: String },
    #[error("a passphrase must not be empty")]
    EmptyPassphrase,
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// A 128-bit secret key with a human name.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; KEY_BYTES],
    name: String,
    /// Derived once: every block read or marked needs one.
    masks: [u32; MASK_PERIOD],
    /// The payload code's step permutation per cycle row ([`crate::code`]).
    code_perms: [[u8; MESSAGE_BITS]; MASK_PERIOD],
}

impl std::fmt::Debug for Key {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?}, {})", self.name, self.fingerprint())
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeyFile {
    format: String,
    name: String,
    key: String,
}

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_BYTES], name: impl Into<String>) -> Key {
        let mut key = Key { bytes, name: name.into(), masks: [0; MASK_PERIOD], code_perms: [[0; MESSAGE_BITS]; MASK_PERIOD] };
        let all: [u8; 4 * MASK_PERIOD] = key.derive("block masks");
        key.masks = std::array::from_fn(|k| u32::from_le_bytes(all[4 * k..4 * k + 4].try_into().expect("4 bytes")));
        key.code_perms = crate::code::permutations(key.derive("payload code interleaver"));
        key
    }

    /// A new random key from the operating system's generator.
    pub fn generate(name: impl Into<String>) -> Key {
        let mut bytes = [0u8; KEY_BYTES];
        rand::fill(&mut bytes);
        Key::from_bytes(bytes, name)
    }

    /// Derives a key from a passphrase with Argon2id (memory-hard: 19 MiB, 2 passes), so short
    /// passphrases cannot be brute-forced cheaply.
    pub fn from_passphrase(passphrase: &str, name: impl Into<String>) -> Result<Key, KeyError> {
        if passphrase.is_empty() {
            return Err(KeyError::EmptyPassphrase);
        }
        let mut bytes = [0u8; KEY_BYTES];
        argon2::Argon2::default()
            .hash_password_into(passphrase.as_bytes(), PASSPHRASE_SALT, &mut bytes)
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        Ok(Key::from_bytes(bytes, name))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.bytes
    }

    pub fn hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(s: &str, name: impl Into<String>) -> Option<Key> {
        let v = hex::decode(s.trim()).ok()?;
        Some(Key::from_bytes(v.try_into().ok()?, name))
    }

    fn derive<const N: usize>(&self, label: &str) -> [u8; N] {
        let mut out = [0u8; N];
        Hkdf::<Sha256>::new(Some(b"stemmark"), &self.bytes)
            .expand(label.as_bytes(), &mut out)
            .expect("HKDF output length is far below its limit");
        out
    }

    /// Seed of the tile channel's keyed patterns (unit allocation, signs, per-block scramble).
    pub(crate) fn pattern_seed(&self) -> [u8; 32] {
        self.derive("tile channel patterns")
    }

    /// A short public identifier (8 hex digits) safe to show and store.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.derive::<4>("fingerprint"))
    }

    /// The ±1 vector the networks are conditioned on.
    pub fn vector(&self) -> [f32; KEY_DIM] {
        let bits: [u8; KEY_DIM / 8] = self.derive("network key vector");
        std::array::from_fn(|i| if bits[i / 8] >> (i % 8) & 1 == 1 { 1.0 } else { -1.0 })
    }

    /// The 32-bit keystream XORed onto the framed message before embedding.
    pub fn scrambler(&self) -> u32 {
        const _: () = assert!(MESSAGE_BITS == 32);
        u32::from_le_bytes(self.derive("message scrambler"))
    }

    /// The mask XORed onto the word of grid block `index` (block 0 starts at timeline or file
    /// zero), repeating every [`MASK_PERIOD`] blocks. Without it every block carries the same
    /// word, and any detector output that repeats from block to block looks like a mark: a key
    /// that did not make the mark reads it as some consistent word, and the detector's own bias on
    /// unmarked audio adds up. With it, only the marking key's masks line the blocks up again.
    pub fn block_mask(&self, index: i64) -> u32 {
        self.masks[index.rem_euclid(MASK_PERIOD as i64) as usize]
    }

    /// The payload code's permutation for grid block `index` (by its cycle row): channel bit b
    /// carries trellis step `perm[b]`.
    pub fn code_permutation(&self, index: i64) -> &[u8; MESSAGE_BITS] {
        &self.code_perms[index.rem_euclid(MASK_PERIOD as i64) as usize]
    }

    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: p.clone(), source })?;
        let file: KeyFile =
            toml::from_str(&text).map_err(|e| KeyError::Format { path: p.clone(), why: e.message().to_string() })?;
        if file.format != FORMAT {
            return Err(KeyError::Format { path: p, why: format!("unknown format {:?}", file.format) });
        }
        Key::from_hex(&file.key, file.name)
            .ok_or_else(|| KeyError::Format { path: p, why: "`key` must be 32 hex digits (128 bits)".into() })
    }

    /// Writes the key file; refuses to overwrite an existing file (a lost key loses its marks).
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let p = path.display().to_string();
        let body = toml::to_string(&KeyFile { format: FORMAT.into(), name: self.name.clone(), key: self.hex() })
            .expect("key file serialises");
        let text = format!("# Stemmark watermark key. Keep it secret: whoever holds it can read this mark.\n{body}");
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(|source| KeyError::Write { path: p.clone(), source })?;
        f.write_all(text.as_bytes()).map_err(|source| KeyError::Write { path: p, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trip_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.key");
        let k = Key::generate("drums");
        k.save(&p).unwrap();
        assert_eq!(Key::load(&p).unwrap(), k);
        assert!(k.save(&p).is_err(), "must not overwrite a key file");
    }

    #[test]
    fn bad_key_files_are_rejected_clearly() {
        let dir = tempfile::tempdir().unwrap();
        for (i, text) in [
            "garbage",
            "format = \"stemmark-key-1\"\nname = \"x\"\nkey = \"0011\"",
            "format = \"other\"\nname = \"x\"\nkey = \"00112233445566778899aabbccddeeff\"",
        ]
        .iter()
        .enumerate()
        {
            let p = dir.path().join(format!("{i}.key"));
            std::fs::write(&p, text).unwrap();
            let e = Key::load(&p).unwrap_err().to_string();
            assert!(e.contains("not a Stemmark key file"), "{e}");
        }
        assert!(Key::load(&dir.path().join("missing.key")).unwrap_err().to_string().contains("cannot read"));
    }

    #[test]
    fn passphrase_is_deterministic_and_distinct() {
        let a = Key::from_passphrase("correct horse", "a").unwrap();
        assert_eq!(a.bytes(), Key::from_passphrase("correct horse", "b").unwrap().bytes());
        assert_ne!(a.bytes(), Key::from_passphrase("correct horsf", "a").unwrap().bytes());
        assert!(Key::from_passphrase("", "a").is_err());
    }

    #[test]
    fn derived_values_are_balanced_and_independent() {
        let a = Key::generate("a");
        let b = Key::generate("b");
        let ones = a.vector().iter().filter(|&&x| x > 0.0).count();
        assert!((16..=48).contains(&ones), "{ones}");
        assert_ne!(a.vector(), b.vector());
        assert_ne!(a.scrambler(), b.scrambler());
        let masks: Vec<u32> = (0..MASK_PERIOD as i64).map(|k| a.block_mask(k)).collect();
        let ones: u32 = masks.iter().map(|m| m.count_ones()).sum();
        assert!((160..=352).contains(&ones), "{ones} of 512 mask bits set");
        assert!(masks.iter().enumerate().all(|(i, m)| !masks[..i].contains(m)), "masks repeat within a period");
        assert_eq!(a.block_mask(-1), a.block_mask(MASK_PERIOD as i64 - 1), "negative positions wrap");
        assert_eq!(a.block_mask(3), a.block_mask(3 + 5 * MASK_PERIOD as i64));
        assert_ne!(a.block_mask(0), b.block_mask(0));
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert!(!format!("{a:?}").contains(&a.hex()), "Debug must not leak the key");
    }
}
