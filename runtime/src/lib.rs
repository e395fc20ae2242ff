//! The modelc runtime: the command-line interface, data sources, executors
//! (compiled CPU code or the reference interpreter), the trainer and its run
//! folder, initialization, schedules, metrics and checkpoints. The binary in
//! `main.rs` is a thin shell around [`cli::run`], so tests drive the CLI
//! in-process.

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod exec;
pub mod init;
pub mod metrics;
pub mod plot;
pub mod render;
pub mod resources;
pub mod rundir;
pub mod sample;
pub mod schedule;
pub mod train;
