//! # cohort-privacy
//!
//! (crate docs written below)

pub mod accountant;
pub mod sampler;
pub mod rotation;
pub mod rounding;
pub mod distributed;
pub mod central;
pub mod config;
pub mod plan;
pub mod query;
