//! `mtpath info`: describe a weights file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use clap::Parser;
use mtpath_shared::weights::{normalize_name, read_weights_file};
use mtpath_shared::{Network, NetworkSpec};

/// Describe a weights file: architecture (from mtpath metadata or inferred from the tensor
/// names), parameter count, tensors grouped by top-level prefix, and metadata.
///
/// Example: mtpath info run/best.safetensors
#[derive(Parser)]
pub struct Args {
    /// safetensors or PyTorch .pth file.
    file: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let file = read_weights_file(&args.file, &Device::Cpu)?;
    println!("file:          {}", args.file.display());
    match file.arch() {
        Ok(arch) => {
            let trunk = Network::new(NetworkSpec::trunk(arch), &Device::Cpu, 0)?;
            println!("architecture:  {arch} ({}-d features)", arch.feature_dim());
            println!("trunk params:  {}", trunk.store().parameter_count());
        }
        Err(e) => println!("architecture:  unknown ({e})"),
    }
    let mut total = 0usize;
    let mut groups: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for (name, t) in &file.tensors {
        let n = normalize_name(name);
        let prefix = match n.split('.').next() {
            Some("features") => n.split('.').take(2).collect::<Vec<_>>().join("."),
            Some("heads") => n.split('.').take(2).collect::<Vec<_>>().join("."),
            Some(p) => p.to_string(),
            None => n.clone(),
        };
        let e = groups.entry(prefix).or_default();
        e.0 += 1;
        e.1 += t.elem_count();
        total += t.elem_count();
        *dtypes.entry(format!("{:?}", t.dtype())).or_default() += 1;
    }
    println!(
        "tensors:       {} ({} values; loaded dtypes {:?})",
        file.tensors.len(),
        total,
        dtypes
    );
    println!("by prefix:");
    for (p, (count, values)) in &groups {
        println!("  {p:<40} {count:>4} tensors {values:>12} values");
    }
    if let Some(card) = file.model_card()? {
        println!("mtpath metadata:");
        println!(
            "  input {} px (resize {}), mean {:?}, std {:?}",
            card.trunk.input_size, card.trunk.resize_shorter, card.trunk.mean, card.trunk.std
        );
        if let Some(c) = card.classifier {
            println!("  classifier: {c} outputs");
        }
        for (i, h) in card.heads.iter().enumerate() {
            println!(
                "  head {i}: {} ({} classes: {})",
                h.name,
                h.classes.len(),
                h.classes.join(", ")
            );
        }
    }
    let other: Vec<_> = file
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "mtpath")
        .collect();
    if !other.is_empty() {
        println!("other metadata:");
        for (k, v) in other {
            let v: String = v.chars().take(100).collect();
            println!("  {k}: {v}");
        }
    }
    Ok(())
}
