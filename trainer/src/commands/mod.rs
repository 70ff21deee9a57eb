//! One module per subcommand.

pub mod bench;
pub mod demo;
pub mod eval;
pub mod export;
pub mod features;
pub mod finetune;
pub mod info;
pub mod loto;
pub mod plot;
pub mod pool;
pub mod predict;
pub mod serve;
pub mod tile;
pub mod train;
