//! Integration tests of the image format, in memory: round trips, golden vectors, damage.

mod chain_reader;
mod damage;
mod golden;
mod mem;
