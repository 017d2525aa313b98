//! The two storage tiers: in-process memory (L1) and Redis (L2).

pub(crate) mod clock;
pub(crate) mod memory;
pub(crate) mod redis;
