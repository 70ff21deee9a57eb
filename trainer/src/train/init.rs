//! Trunk initialisation: random, torchvision's ImageNet weights, or any weights file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use mtpath_shared::weights::{read_weights_file, LoadMode};
use mtpath_shared::{Arch, Network};

/// torchvision's ImageNet checkpoint file name and download address for `arch` (the IMAGENET1K_V1
/// weights, the ones the paper compared against).
pub fn imagenet_file(arch: Arch) -> (&'static str, String) {
    let file = match arch {
        Arch::ResNet18 => "resnet18-f37072fd.pth",
        Arch::ResNet34 => "resnet34-b627a593.pth",
        Arch::ResNet50 => "resnet50-0676ba61.pth",
        Arch::ResNet101 => "resnet101-63fe2227.pth",
        Arch::DenseNet121 => "densenet121-a639ec97.pth",
        Arch::DenseNet169 => "densenet169-b2777c0a.pth",
    };
    (file, format!("https://download.pytorch.org/models/{file}"))
}

/// Where PyTorch caches hub checkpoints: `$TORCH_HOME/hub/checkpoints`, else
/// `$XDG_CACHE_HOME/torch/hub/checkpoints`, else `~/.cache/torch/hub/checkpoints`.
pub fn torch_cache_dir() -> Option<PathBuf> {
    if let Some(t) = std::env::var_os("TORCH_HOME") {
        return Some(PathBuf::from(t).join("hub/checkpoints"));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("torch/hub/checkpoints"))
}

/// What `--init` resolved to, for logs and the model card.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// Random (seeded) initialisation.
    Random,
    /// Weights from this file.
    File(PathBuf),
}

/// Resolve an `--init` value: `none`/`random`, `imagenet`, or a path.
pub fn resolve(init: &str, arch: Arch) -> Result<Init> {
    let init = crate::released::resolve_weights(init)?;
    match init.as_str() {
        "none" | "random" | "" => Ok(Init::Random),
        "imagenet" => {
            let (file, url) = imagenet_file(arch);
            let dir = torch_cache_dir();
            match dir.as_ref().map(|d| d.join(file)) {
                Some(p) if p.is_file() => Ok(Init::File(p)),
                p => bail!(
                    "ImageNet weights for {arch} are not in the PyTorch cache ({}); download \
                     {url} there (or anywhere, then pass --init FILE), e.g. \
                     `python -c \"import torchvision; torchvision.models.{arch}(weights='IMAGENET1K_V1')\"`",
                    p.map(|p| p.display().to_string())
                        .unwrap_or_else(|| "no cache directory: HOME is not set".into())
                ),
            }
        }
        path => {
            let p = Path::new(path);
            if !p.is_file() {
                bail!(
                    "{path}: no such weights file; --init takes `none`, `imagenet` or a \
                     .safetensors/.pth file"
                );
            }
            Ok(Init::File(p.to_path_buf()))
        }
    }
}

/// Load the trunk of `net` from `init`. Every trunk tensor must be in the file (a file for
/// another architecture is an error naming it); heads and classifiers in the file are ignored
/// and reported.
pub fn load_trunk(net: &Network, init: &Init, device: &Device) -> Result<Vec<String>> {
    let Init::File(path) = init else {
        return Ok(Vec::new());
    };
    let file = read_weights_file(path, device)?;
    let report = net
        .load_weights(&file, LoadMode::Partial)
        .with_context(|| format!("{}: cannot initialise the trunk", path.display()))?;
    let missing_trunk: Vec<&String> = report
        .missing
        .iter()
        .filter(|n| net.is_trunk_name(n) && !n.ends_with("num_batches_tracked"))
        .collect();
    if !missing_trunk.is_empty() {
        bail!(
            "{}: {} trunk tensor(s) of {} are missing (e.g. {}); is this a {} checkpoint?",
            path.display(),
            missing_trunk.len(),
            net.arch(),
            missing_trunk
                .iter()
                .take(5)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            net.arch()
        );
    }
    Ok(report.unexpected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtpath_shared::testdata::fixtures_dir;
    use mtpath_shared::NetworkSpec;

    #[test]
    fn init_from_a_torchvision_file_and_clear_errors() {
        let f = fixtures_dir().join("resnet18.safetensors");
        let init = resolve(f.to_str().unwrap(), Arch::ResNet18).unwrap();
        let net = Network::new(NetworkSpec::trunk(Arch::ResNet18), &Device::Cpu, 0).unwrap();
        let extra = load_trunk(&net, &init, &Device::Cpu).unwrap();
        assert_eq!(extra, vec!["fc.bias".to_string(), "fc.weight".to_string()]);

        let r50 = Network::new(NetworkSpec::trunk(Arch::ResNet50), &Device::Cpu, 0).unwrap();
        let err = format!("{:#}", load_trunk(&r50, &init, &Device::Cpu).unwrap_err());
        assert!(err.contains("resnet18.safetensors"), "{err}");

        let err = resolve("/nope/w.pth", Arch::ResNet18)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nope/w.pth"), "{err}");
        assert_eq!(resolve("none", Arch::ResNet18).unwrap(), Init::Random);
    }
}
