//! Choosing where training runs: CUDA when libtorch's CUDA part and a GPU are there, else the CPU.
//!
//! The default link of `tch` drops `libtorch_cuda.so` (the linker's `--as-needed` sees no symbol
//! used from it), and without it libtorch reports no CUDA even on a GPU machine. So it is loaded
//! here, from the folder the process already loaded `libtorch_cpu.so` from, before any CUDA call.
//! Where it is missing (a CPU-only install) or the driver is absent, training falls back to the
//! CPU with one log line, so one binary passes CPU-only CI and trains on the GPU.
//!
//! On the CPU, training uses one intra-op thread: on shared cores libgomp's spinning threads made
//! steps ~3× slower. When running with more threads, set `OMP_WAIT_POLICY=PASSIVE`.

use std::path::PathBuf;
use std::sync::OnceLock;

use tch::Device;

const RTLD_NOW: i32 = 2;
const RTLD_GLOBAL: i32 = 0x100;

unsafe extern "C" {
    fn dlopen(filename: *const std::ffi::c_char, flag: i32) -> *mut std::ffi::c_void;
    fn dlerror() -> *const std::ffi::c_char;
}

/// The folder libtorch was loaded from, read from the process's own memory map.
pub fn libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| PathBuf::from(p).parent().map(PathBuf::from))
}

/// Loads `libtorch_cuda.so` beside `libtorch_cpu.so` (once). Errors say why it could not.
pub fn load_cuda() -> Result<PathBuf, String> {
    static LOADED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            // Any call makes sure libtorch itself is mapped before its folder is looked up.
            let _ = tch::utils::has_cuda();
            let dir = libtorch_dir().ok_or("libtorch_cpu.so is not loaded in this process")?;
            let path = dir.join("libtorch_cuda.so");
            if !path.is_file() {
                return Err(format!(
                    "{} does not exist (CPU-only libtorch)",
                    path.display()
                ));
            }
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(|e| e.to_string())?;
            // SAFETY: a valid C string; the handle is kept for the life of the process on purpose.
            let handle = unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) };
            if handle.is_null() {
                // SAFETY: dlerror returns a static C string (or null) describing the failure.
                let why = unsafe {
                    let e = dlerror();
                    if e.is_null() {
                        "unknown error".to_owned()
                    } else {
                        std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                    }
                };
                return Err(format!("cannot load {}: {why}", path.display()));
            }
            Ok(path)
        })
        .clone()
}

/// What [`pick`] may choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// CUDA when available, else the CPU.
    Auto,
    Cpu,
}

/// Picks the training device and logs the choice in one line.
pub fn pick(want: Want) -> Device {
    let device = match want {
        Want::Cpu => {
            tracing::info!("training on the CPU (asked for)");
            Device::Cpu
        }
        Want::Auto => match load_cuda() {
            Ok(_) if tch::Cuda::is_available() => {
                tracing::info!(
                    "training on CUDA ({} GPU(s), cuDNN {})",
                    tch::Cuda::device_count(),
                    if tch::Cuda::cudnn_is_available() {
                        "yes"
                    } else {
                        "no"
                    }
                );
                Device::Cuda(0)
            }
            Ok(lib) => {
                tracing::info!(
                    "training on the CPU: {} loaded but no CUDA device or driver",
                    lib.display()
                );
                Device::Cpu
            }
            Err(why) => {
                tracing::info!("training on the CPU: {why}");
                Device::Cpu
            }
        },
    };
    if device == Device::Cpu {
        tch::set_num_threads(1);
    }
    device
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_a_working_device() {
        // CPU-only machines fall back with a reason; GPU machines get CUDA. Either way it computes.
        let device = pick(Want::Auto);
        let x = tch::Tensor::ones([4], (tch::Kind::Float, device));
        assert_eq!(f64::try_from(x.sum(tch::Kind::Float)).unwrap(), 4.0);
        assert!(libtorch_dir().is_some_and(|d| d.join("libtorch_cpu.so").is_file()));
        if device == Device::Cpu {
            assert_eq!(tch::get_num_threads(), 1);
        }
        eprintln!("device: {device:?}; CUDA library: {:?}", load_cuda());
    }
}
