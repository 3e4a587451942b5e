//! Helpers shared by the end-to-end tests. Keep them small and generic: anything that only
//! one test file needs lives in that file.

pub mod binaries;
pub mod cluster;
pub mod docs;
pub mod events;
pub mod files;
pub mod records;
pub mod server;
pub mod tools;
