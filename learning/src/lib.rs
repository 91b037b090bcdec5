//! cohort-learning: not built yet; see ARCHITECTURE.md for what this crate will hold.
