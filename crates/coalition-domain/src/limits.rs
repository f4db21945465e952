//! The limits the core enforces. Every limit is named with its unit last and has a default
//! that the configuration documents.

/// Limits applied when a submission is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long after it happened a transaction may still be submitted, for terminals that
    /// were offline. Older submissions are refused.
    pub offline_window_ms: i64,
    /// How far ahead of the server's clock `occurred_at` may be, to absorb terminal clock skew.
    pub future_skew_max_ms: i64,
    /// The most points one earn or burn may carry.
    pub points_per_transaction_max: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            offline_window_ms: 72 * 3_600_000,
            future_skew_max_ms: 5 * 60_000,
            points_per_transaction_max: 10_000_000,
        }
    }
}
