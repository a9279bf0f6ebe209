//! Integration tests of the image format, in memory: round trips, golden vectors, damage;
//! and the corruption campaign over a split chain in a temporary folder.

mod campaign;
mod chain_reader;
mod damage;
mod golden;
mod mem;
mod pipeline;
mod salvage;
