//! Where the plugin's run-time files are: the folder holding the plugin binary (the `.clap` file,
//! or `Stemmark.vst3/Contents/<arch>-linux/`), which `cargo xtask bundle` fills with the ONNX
//! Runtime library and a `models/` folder. The host executable's folder says nothing about us.

use std::path::PathBuf;

use stemmark_models::modelset::MODELS_ENV;

/// The folder of the shared library this code was loaded from.
pub fn plugin_dir() -> Option<PathBuf> {
    #[cfg(unix)]
    {
        // SAFETY: dladdr only reads the loader's tables; `info` is plain data it fills in, and
        // the address is a function of this very library.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        let found = unsafe { libc::dladdr(plugin_dir as *const libc::c_void, &mut info) };
        if found == 0 || info.dli_fname.is_null() {
            return None;
        }
        // SAFETY: dladdr returned a NUL-terminated path owned by the loader.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
        let path = PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes()),
        );
        let path = path.canonicalize().unwrap_or(path);
        path.parent().map(PathBuf::from)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// `$STEMMARK_MODELS`, else `models/` beside the plugin binary, else the project's usual search.
pub fn models_dir(plugin_dir: Option<&PathBuf>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(MODELS_ENV) {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = plugin_dir.map(|d| d.join("models"))
        && d.is_dir()
    {
        return Some(d);
    }
    stemmark_models::modelset::default_dir()
}
