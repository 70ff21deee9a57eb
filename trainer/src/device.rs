//! Choosing the compute device from the command line.

use anyhow::{bail, Context, Result};
use candle_core::Device;

/// `cpu`, `cuda` or `cuda:N`. CUDA needs a build with `--features cuda` (see the README).
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .with_context(|| format!("--device {s}: write cuda:N with N a GPU number"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!(
                    "--device {s}: this mtpath was built without CUDA; build it with \
                     `cargo build --release -p mtpath --features cuda` after \
                     `bash scripts/cuda-setup.sh && source .cuda/env.sh` (README, CUDA)"
                );
            }
            Device::new_cuda(ordinal).with_context(|| {
                format!(
                    "--device {s}: cannot open the GPU (is the NVIDIA driver loaded, and \
                     LD_LIBRARY_PATH pointing at the CUDA 13 libraries?)"
                )
            })
        }
        other => bail!("--device {other}: use cpu, cuda or cuda:N"),
    }
}

/// Wait for the device's queued work (timings on a GPU need it).
pub fn synchronize(device: &Device) -> Result<()> {
    device.synchronize()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_nonsense_is_named() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let e = format!("{:#}", parse_device("tpu").unwrap_err());
        assert!(e.contains("tpu") && e.contains("cuda:N"), "{e}");
        let e = format!("{:#}", parse_device("cuda:x").unwrap_err());
        assert!(e.contains("cuda:x"), "{e}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let e = format!("{:#}", parse_device("cuda").unwrap_err());
        assert!(e.contains("--features cuda"), "{e}");
    }
}
