//! `mtpath`: multi-task pre-training of CNN trunks for digital pathology.

mod block_cache;
mod commands;
mod data;
mod device;
mod dist;
mod evaluate;
mod images;
mod plots;
mod pool;
mod released;
mod session;
mod slides;
mod train;

use clap::{Parser, Subcommand};

/// Multi-task pre-training and feature extraction for digital pathology.
#[derive(Parser)]
#[command(name = "mtpath", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Embed images with a trunk: one feature vector per image, written to a safetensors file.
    Features(commands::features::Args),
    /// Write the web model: trunk with BatchNorm folded, f32 or f16, with a model card.
    Export(commands::export::Args),
    /// Describe a weights file: architecture, parameter count, tensors and metadata.
    Info(commands::info::Args),
    /// Time inference and training steps (images/s) for an architecture, batch and size.
    Bench(commands::bench::Args),
    /// Check a task pool file: decode every image, show per-task splits, write them as CSV.
    Pool(commands::pool::Args),
    /// Multi-task pre-training on a task pool (the paper's scheme), with checkpoints and resume.
    Train(commands::train::Args),
    /// Pre-train a small model on the real tasks in ../shared/data with one task held out.
    Demo(commands::demo::Args),
    /// Evaluate a trunk's frozen features on task folders over several seeds (linear, SVM, kNN probes).
    Eval(commands::eval::Args),
    /// Fine-tune a trunk with a new head on one task (learning rate and epoch chosen on validation).
    Finetune(commands::finetune::Args),
    /// Leave-one-task-out: pre-train without held-out tasks (a grid of settings), compare on
    /// them against random init, single-task and ImageNet baselines, rank by average rank.
    Loto(commands::loto::Args),
    /// Draw a training run's curves or an evaluation's bars and confusion matrices (SVG + PNG).
    Plot(commands::plot::Args),
    /// Classify features or images with a probe file exported by the browser explorer.
    Predict(commands::predict::Args),
    /// Cut whole-slide images (SVS, pyramidal TIFF, OME-TIFF) into a task folder of tiles
    /// where there is tissue, at a resolution (--mpp) or pyramid level.
    Tile(commands::tile::Args),
    /// Serve the browser explorer and models on 127.0.0.1 (cross-origin isolated).
    Serve(commands::serve::Args),
}

/// glibc's malloc hands allocations over 128 KiB–32 MiB straight to mmap and unmaps them on
/// free, so every tensor of every layer costs fresh pages: page faults and kernel zeroing on
/// each step. Keeping freed memory in the heap instead made a ResNet-18 training step (batch
/// 32, 112 px, 2 threads) 30% faster (42 → 55 img/s) and ResNet-50 inference 24% faster.
/// The threshold cannot go past 32 MiB, so larger blocks are not mmapped at all either
/// (`M_MMAP_MAX` 0): they come from the heap and go back to it, where the next block of a
/// size near enough reuses the pages. [`block_cache`] only reuses blocks of exactly the same
/// size; DenseNet's inputs grow by 32 channels a layer, so at batch 32 almost every one was
/// a fresh mmap (page faults and kernel zeroing, 5% of the pass): DenseNet-121 inference at
/// batch 32 went 55 → 63.5 img/s, training steps and their peak memory unchanged. The usual
/// MALLOC_*_ environment variables (and GLIBC_TUNABLES) still win.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory_in_the_heap() {
    let set_by_user = |name: &str| std::env::var_os(name).is_some();
    if set_by_user("MALLOC_MMAP_THRESHOLD_")
        || set_by_user("MALLOC_TRIM_THRESHOLD_")
        || set_by_user("MALLOC_MMAP_MAX_")
        || set_by_user("GLIBC_TUNABLES")
    {
        return;
    }
    // SAFETY: mallopt only sets allocator parameters; it is called first thing in main,
    // before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory_in_the_heap() {}

/// Blocks over glibc's 32 MiB mmap threshold (224 px activations) kept for reuse: +7% on a
/// ResNet-18 b32 224 training step, +30 MB peak memory.
#[global_allocator]
static ALLOCATOR: block_cache::BlockCache = block_cache::BlockCache::new();

/// Behave as command-line tools do when the reader of their output goes away (`mtpath info
/// model | head`): end quietly on SIGPIPE instead of panicking at the next print.
#[cfg(unix)]
fn quit_quietly_on_a_closed_pipe() {
    // SAFETY: restoring the default disposition of SIGPIPE, first thing in main, before any
    // thread exists; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn quit_quietly_on_a_closed_pipe() {}

fn main() {
    quit_quietly_on_a_closed_pipe();
    keep_freed_memory_in_the_heap();
    // RUST_BACKTRACE is for panics; without this, candle attaches a backtrace to its errors
    // when it is set, and that backtrace would be printed as part of the error message.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    ALLOCATOR.configure_from_env();
    // candle 0.11 runs elementwise ops on its own spinning thread pool beside rayon's (gemm,
    // our convolution kernels); on few cores the two pools compete and the main thread spins
    // waiting for a descheduled worker. Elementwise ops are memory-bound: one thread costs
    // little there, and ResNet-18 inference (batch 1, 224 px, 2 threads) went from 24.8 to
    // 31.3 img/s. An explicit CANDLE_NUM_THREADS still wins.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Features(a) => commands::features::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Info(a) => commands::info::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Pool(a) => commands::pool::run(a),
        Command::Train(a) => commands::train::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Finetune(a) => commands::finetune::run(a),
        Command::Plot(a) => commands::plot::run(a),
        Command::Loto(a) => commands::loto::run(a),
        Command::Predict(a) => commands::predict::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Tile(a) => commands::tile::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
