//! # cohort-privacy
//!
//! (crate docs written below)

pub mod accountant;
