//! The alliance's rules for holds and point lifetimes. They decide values that are then
//! written on the entry (a hold's deadline, a lot's expiry), so changing the policy never
//! changes what was booked before.

use std::fmt;
use std::str::FromStr;

const DAY_MS: i64 = 86_400_000;

/// Where a lot's expiry is rounded up to, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiryBoundary {
    /// Exactly the lifetime after earning.
    #[default]
    Exact,
    /// The end of the calendar month in which the lifetime ends.
    MonthEnd,
    /// The end of the calendar year in which the lifetime ends.
    YearEnd,
}

impl FromStr for ExpiryBoundary {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "exact" => Ok(ExpiryBoundary::Exact),
            "month_end" => Ok(ExpiryBoundary::MonthEnd),
            "year_end" => Ok(ExpiryBoundary::YearEnd),
            other => Err(format!(
                "expiry boundary must be exact, month_end or year_end, got {other:?}"
            )),
        }
    }
}

impl fmt::Display for ExpiryBoundary {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            ExpiryBoundary::Exact => "exact",
            ExpiryBoundary::MonthEnd => "month_end",
            ExpiryBoundary::YearEnd => "year_end",
        })
    }
}

/// The alliance's rules for holds and point lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerPolicy {
    /// How long a hold stays open before it expires by itself.
    pub hold_timeout_ms: i64,
    /// How long points live after they were earned; `None` for never.
    pub points_lifetime_ms: Option<i64>,
    pub expiry_boundary: ExpiryBoundary,
    /// The most points one transaction may award when the server computes them (an earn by
    /// spend, an exchange in); the same limit explicit points are checked against.
    pub points_per_transaction_max: i64,
}

impl Default for LedgerPolicy {
    fn default() -> Self {
        LedgerPolicy {
            hold_timeout_ms: DAY_MS,
            points_lifetime_ms: Some(365 * DAY_MS),
            expiry_boundary: ExpiryBoundary::Exact,
            points_per_transaction_max: crate::limits::Limits::default().points_per_transaction_max,
        }
    }
}

impl LedgerPolicy {
    /// When points earned at `earned_at_ms` expire: the lifetime later, rounded up to the
    /// boundary (the first millisecond of the next month or year; expiry happens at it).
    pub fn lot_expiry(&self, earned_at_ms: i64) -> Option<i64> {
        let lifetime = self.points_lifetime_ms?;
        let end = earned_at_ms.saturating_add(lifetime);
        Some(match self.expiry_boundary {
            ExpiryBoundary::Exact => end,
            ExpiryBoundary::MonthEnd | ExpiryBoundary::YearEnd => {
                let (year, month, _) = civil_from_days(end.div_euclid(DAY_MS));
                let (year, month) = if self.expiry_boundary == ExpiryBoundary::MonthEnd {
                    if month == 12 {
                        (year + 1, 1)
                    } else {
                        (year, month + 1)
                    }
                } else {
                    (year + 1, 1)
                };
                days_from_civil(year, month, 1).saturating_mul(DAY_MS)
            }
        })
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_conversions_agree() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // 2026-11-23 is day 20,780.
        assert_eq!(days_from_civil(2026, 11, 23), 20_780);
        for days in [-1, 59, 60, 365, 11_016, 20_780, 36_524] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
    }

    #[test]
    fn lot_expiry_rounds_up_to_the_boundary() {
        // Earned 2026-11-23 00:00 UTC.
        let earned = 20_780 * DAY_MS;
        let mut policy = LedgerPolicy {
            points_lifetime_ms: Some(30 * DAY_MS),
            ..LedgerPolicy::default()
        };
        assert_eq!(policy.lot_expiry(earned), Some(earned + 30 * DAY_MS));
        // 30 days later is 2026-12-23; month end means 2027-01-01.
        policy.expiry_boundary = ExpiryBoundary::MonthEnd;
        assert_eq!(
            policy.lot_expiry(earned),
            Some(days_from_civil(2027, 1, 1) * DAY_MS)
        );
        policy.expiry_boundary = ExpiryBoundary::YearEnd;
        assert_eq!(
            policy.lot_expiry(earned),
            Some(days_from_civil(2027, 1, 1) * DAY_MS)
        );
        policy.points_lifetime_ms = None;
        assert_eq!(policy.lot_expiry(earned), None);
        assert_eq!("month_end".parse(), Ok(ExpiryBoundary::MonthEnd));
        assert!("weekly".parse::<ExpiryBoundary>().is_err());
    }
}
