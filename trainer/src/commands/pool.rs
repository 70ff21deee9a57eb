//! `mtpath pool`: work with a task pool file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::pool::{check, ImageCheck, LoadOptions, Pool, PoolConfig};
use crate::train::config::TrainConfig;

/// Check a task pool: read every task, decode every image, split, and write the splits.
#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    command: PoolCommand,
}

#[derive(Subcommand)]
enum PoolCommand {
    /// Decode every image of every task, print a per-task table (images, classes, groups,
    /// train/val/test sizes, image sizes, unreadable files) and write the splits as CSV.
    ///
    /// A pool file lists task folders (each with manifest.csv: path,label,group,split, or
    /// one subfolder per class):
    ///
    ///   seed = 0
    ///   [[task]]
    ///   path = "data/lymphoma"   # relative to the pool file
    ///   weight = 1.0             # optional
    ///   crop = "random-crop"     # optional: random-crop, random-resized-crop, resize
    ///   split = { train = 0.7, val = 0.15, test = 0.15 }   # optional
    ///
    /// Example: mtpath pool check pool.toml --out splits.csv
    Check(CheckArgs),
}

#[derive(Parser)]
struct CheckArgs {
    /// The pool file (TOML).
    pool: PathBuf,
    /// Where to write the splits CSV (task,path,label,group,split); default
    /// `<pool stem>.splits.csv` beside the pool file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip unreadable or invalid images (all are listed) instead of failing.
    #[arg(long)]
    skip_bad: bool,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        PoolCommand::Check(a) => check_pool(a),
    }
}

fn check_pool(args: CheckArgs) -> Result<()> {
    let config = PoolConfig::from_file(&args.pool)?;
    // The [train] table is checked here too, so `pool check` passes only what `train` accepts.
    TrainConfig::from_table(config.train.as_ref(), &args.pool)?
        .validate()
        .with_context(|| format!("{}: invalid [train] table", args.pool.display()))?;
    let start = Instant::now();
    let pool = Pool::load(
        &config,
        &LoadOptions {
            skip_bad: args.skip_bad,
            check: ImageCheck::Decode,
        },
    )?;
    let elapsed = start.elapsed();
    print!("{}", check::render(&pool));
    let out = args.out.unwrap_or_else(|| {
        let stem = args
            .pool
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pool".into());
        args.pool.with_file_name(format!("{stem}.splits.csv"))
    });
    pool.write_splits(&out)?;
    println!(
        "\nchecked (decoded) in {:.1} s; splits written to {}",
        elapsed.as_secs_f64(),
        out.display()
    );
    Ok(())
}
