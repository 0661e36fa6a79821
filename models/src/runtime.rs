//! ONNX Runtime: finding and loading the shared library once per process, and opening sessions
//! that are checked against the model contracts.
//!
//! The library is searched, in order: the path given by the caller, `$STEMMARK_ORT_LIB`, beside the
//! running executable (and its `lib/`), beside the plugin binary (the caller passes that folder),
//! and the project's local install `.deps/onnxruntime/lib/` in the working directory or any of its
//! parents or the executable's parents (made by `cargo xtask setup`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::contract::{self, Contract};

/// File name of the library on this platform.
pub const LIB_NAME: &str = if cfg!(target_os = "windows") {
    "onnxruntime.dll"
} else if cfg!(target_os = "macos") {
    "libonnxruntime.dylib"
} else {
    "libonnxruntime.so"
};
/// Environment variable that names the library file explicitly.
pub const LIB_ENV: &str = "STEMMARK_ORT_LIB";
/// Where `cargo xtask setup` installs the library, relative to the project root.
pub const LOCAL_INSTALL: &str = ".deps/onnxruntime/lib";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library ({LIB_NAME}) not found; looked in:\n{searched}\nRun `cargo xtask setup` (or set {LIB_ENV} to the library file).")]
    LibraryNotFound { searched: String },
    #[error("cannot load ONNX Runtime from {path}: {why}")]
    LibraryLoad { path: PathBuf, why: String },
    #[error("ONNX Runtime was already loaded from {loaded}; cannot switch to {wanted} in the same process")]
    LibraryConflict { loaded: PathBuf, wanted: PathBuf },
    #[error("CUDA execution provider unavailable for {model}: {why}")]
    Cuda { model: String, why: String },
    #[error("cannot open {model}: {why}")]
    Session { model: String, why: String },
    #[error("{model} does not follow the {role} contract: {why}")]
    Contract { model: String, role: &'static str, why: String },
    #[error("running {role} failed: {why}")]
    Run { role: &'static str, why: String },
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    #[default]
    Cpu,
    Cuda,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Cpu => "CPU",
            Provider::Cuda => "CUDA",
        })
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Provider::Cpu),
            "cuda" | "gpu" => Ok(Provider::Cuda),
            _ => Err(format!("unknown provider {s:?} (cpu or cuda)")),
        }
    }
}

/// The loaded library and its environment, kept for the life of the process (a plugin host may
/// unload us, but ONNX Runtime must not be torn down while another instance still runs).
static LOADED: Mutex<Option<(PathBuf, ort::environment::Environment)>> = Mutex::new(None);

/// Candidate library paths, in search order.
pub fn candidates(explicit: Option<&Path>, extra_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(LIB_ENV) {
        out.push(PathBuf::from(p));
    }
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    if let Some(d) = &exe_dir {
        out.push(d.join(LIB_NAME));
        out.push(d.join("lib").join(LIB_NAME));
    }
    for d in extra_dirs {
        out.push(d.join(LIB_NAME));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Some(d) = &exe_dir {
        roots.extend(d.ancestors().map(Path::to_path_buf));
    }
    for r in roots {
        let p = r.join(LOCAL_INSTALL).join(LIB_NAME);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Loads ONNX Runtime once per process and returns the library's path. Later calls return the
/// same path (or an error if they name a different library explicitly).
pub fn init(explicit: Option<&Path>, extra_dirs: &[PathBuf]) -> Result<PathBuf, RuntimeError> {
    environment(explicit, extra_dirs).map(|(p, _)| p)
}

fn environment(explicit: Option<&Path>, extra_dirs: &[PathBuf]) -> Result<(PathBuf, ort::environment::Environment), RuntimeError> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((path, env)) = loaded.as_ref() {
        if let Some(want) = explicit
            && want.canonicalize().ok().as_ref() != path.canonicalize().ok().as_ref()
        {
            return Err(RuntimeError::LibraryConflict { loaded: path.clone(), wanted: want.into() });
        }
        return Ok((path.clone(), env.clone()));
    }
    // A library the user named explicitly must exist: silently using another would hide a typo.
    let named = explicit.map(Path::to_path_buf).or_else(|| std::env::var_os(LIB_ENV).map(PathBuf::from));
    if let Some(p) = named.filter(|p| !p.is_file()) {
        return Err(RuntimeError::LibraryLoad { path: p, why: format!("no such file (named by --ort-lib or {LIB_ENV})") });
    }
    let cands = candidates(explicit, extra_dirs);
    let path = cands.iter().find(|p| p.is_file()).cloned().ok_or_else(|| RuntimeError::LibraryNotFound {
        searched: cands.iter().map(|p| format!("  {}", p.display())).collect::<Vec<_>>().join("\n"),
    })?;
    let builder = ort::init_from(&path).map_err(|e| RuntimeError::LibraryLoad { path: path.clone(), why: e.to_string() })?;
    let env = builder
        .with_name("stemmark")
        .build()
        .map_err(|e| RuntimeError::LibraryLoad { path: path.clone(), why: e.to_string() })?;
    tracing::info!("ONNX Runtime loaded from {}", path.display());
    *loaded = Some((path.clone(), env.clone()));
    Ok((path, env))
}

/// A session checked against its contract, with the provider that really runs it.
pub struct Model {
    pub contract: Contract,
    pub session: Session,
    pub provider: Provider,
    pub path: PathBuf,
}

impl Model {
    /// Opens `path` on `provider`. CUDA is registered with `error_on_failure`, so a missing GPU,
    /// driver or CUDA library is an error here instead of a silent fall-back to the CPU.
    /// ONNX Runtime must have been loaded with [`init`] (else it is searched for here).
    pub fn open(path: &Path, contract: Contract, provider: Provider, threads: usize) -> Result<Model, RuntimeError> {
        let (_, env) = environment(None, &[])?;
        let model = path.display().to_string();
        let session_err = |e: ort::Error| RuntimeError::Session { model: model.clone(), why: e.to_string() };
        let mut b = Session::builder(&env)
            .map_err(session_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| session_err(e.into()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| session_err(e.into()))?;
        // A developer's switch: ONNX Runtime's per-node timings as a Chrome trace, one per session.
        if let Some(dir) = std::env::var_os("STEMMARK_ORT_PROFILE") {
            b = b
                .with_profiling(Path::new(&dir).join(contract.role))
                .map_err(|e| session_err(e.into()))?;
        }
        if provider == Provider::Cuda {
            b = b
                .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
                .map_err(|e| RuntimeError::Cuda { model: model.clone(), why: e.to_string() })?;
        }
        let session = b.commit_from_file(path).map_err(|e| match provider {
            Provider::Cuda if e.to_string().to_lowercase().contains("cuda") => {
                RuntimeError::Cuda { model: model.clone(), why: e.to_string() }
            }
            _ => session_err(e),
        })?;
        check_contract(&session, &contract).map_err(|why| RuntimeError::Contract { model: model.clone(), role: contract.role, why })?;
        tracing::info!("{} ({}) runs on {provider}", contract.role, path.display());
        Ok(Model { contract, session, provider, path: path.to_path_buf() })
    }
}

fn check_contract(session: &Session, c: &Contract) -> Result<(), String> {
    let io = [("input", session.inputs(), c.inputs), ("output", session.outputs(), c.outputs)];
    for (kind, outlets, specs) in io {
        if outlets.len() != specs.len() {
            let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
            return Err(format!("{} {kind}s {names:?}, the contract has {}", outlets.len(), specs.len()));
        }
        for spec in specs {
            let o = outlets
                .iter()
                .find(|o| o.name() == spec.name)
                .ok_or_else(|| format!("no {kind} named `{}`", spec.name))?;
            if o.dtype().tensor_type() != Some(ort::value::TensorElementType::Float32) {
                return Err(format!("{kind} `{}` is not a float32 tensor", spec.name));
            }
            let shape = o.dtype().tensor_shape().ok_or_else(|| format!("{kind} `{}` has no shape", spec.name))?;
            if let Some(why) = contract::shape_mismatch(spec, shape) {
                return Err(why);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order_starts_with_explicit_and_ends_with_local_installs() {
        let c = candidates(Some(Path::new("/x/libonnxruntime.so")), &[PathBuf::from("/plug")]);
        assert_eq!(c[0], Path::new("/x/libonnxruntime.so"));
        assert!(c.contains(&PathBuf::from("/plug").join(LIB_NAME)));
        assert!(c.last().unwrap().ends_with(Path::new(LOCAL_INSTALL).join(LIB_NAME)));
    }

    #[test]
    fn provider_parses() {
        assert_eq!("CUDA".parse::<Provider>().unwrap(), Provider::Cuda);
        assert!("tpu".parse::<Provider>().is_err());
    }
}
