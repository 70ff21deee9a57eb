//! One module per subcommand.

pub mod bench;
pub mod features;
pub mod info;
pub mod pool;
