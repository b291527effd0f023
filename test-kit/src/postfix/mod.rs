//! A private Postfix instance: its directory and its two configuration files.

mod instance;
mod main_cf;
mod master_cf;

pub use instance::InstanceDir;
pub use main_cf::MainCf;
pub use master_cf::MasterCf;
