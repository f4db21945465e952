//! How the console writes figures: money as `¥1,234.56` from integer minor units (never
//! through floating point), points with thousands separators, times in the alliance's UTC
//! offset.

use coalition_domain::settlement::Cutoff;

use crate::export::minor_digits;

/// `1234567` as `1,234,567`; negative numbers keep their sign in front.
pub fn grouped(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if value < 0 {
        out.push('-');
    }
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The symbol a finance team reads in front of an amount of `currency`.
pub fn currency_symbol(currency: &str) -> String {
    match currency {
        "CNY" | "JPY" => "¥".to_owned(),
        "USD" => "$".to_owned(),
        "EUR" => "€".to_owned(),
        "GBP" => "£".to_owned(),
        "HKD" => "HK$".to_owned(),
        other => format!("{other} "),
    }
}

/// `123456` minor units of CNY as `¥1,234.56`, `-5` as `-¥0.05`: exact, digit by digit.
pub fn money(minor: i64, currency: &str) -> String {
    let digits = minor_digits(currency);
    let scale = 10u64.pow(digits);
    let magnitude = minor.unsigned_abs();
    let whole = grouped((magnitude / scale) as i64);
    let sign = if minor < 0 { "-" } else { "" };
    let symbol = currency_symbol(currency);
    if digits == 0 {
        format!("{sign}{symbol}{whole}")
    } else {
        let fraction = magnitude % scale;
        format!(
            "{sign}{symbol}{whole}.{fraction:0width$}",
            width = digits as usize
        )
    }
}

/// Points with thousands separators.
pub fn points(value: i64) -> String {
    grouped(value)
}

/// A time in the alliance's offset, to the minute: `2026-12-04 18:05`.
pub fn minute(cutoff: &Cutoff, at_ms: i64) -> String {
    let local = cutoff.local_time(at_ms);
    format!("{} {}", &local[..10], &local[11..16])
}

/// A time in the alliance's offset, to the second, with the offset: `2026-12-04 18:05:09 +08:00`.
pub fn second(cutoff: &Cutoff, at_ms: i64) -> String {
    let local = cutoff.local_time(at_ms);
    let offset = &local[local.len() - 6..];
    format!("{} {} {offset}", &local[..10], &local[11..19])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_exact_with_separators_and_the_symbol() {
        let cases = [
            (123_456, "CNY", "¥1,234.56"),
            (0, "CNY", "¥0.00"),
            (5, "CNY", "¥0.05"),
            (-5, "CNY", "-¥0.05"),
            (10_000_000_001, "CNY", "¥100,000,000.01"),
            (i64::MIN, "CNY", "-¥92,233,720,368,547,758.08"),
            (1_234, "JPY", "¥1,234"),
            (1_234, "KWD", "KWD 1.234"),
            (99, "USD", "$0.99"),
        ];
        for (minor, currency, expected) in cases {
            assert_eq!(money(minor, currency), expected, "{minor} {currency}");
        }
    }

    #[test]
    fn points_are_grouped_by_thousands() {
        for (value, expected) in [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (-1_234_567, "-1,234,567"),
            (i64::MAX, "9,223,372,036,854,775,807"),
        ] {
            assert_eq!(points(value), expected);
        }
    }

    #[test]
    fn times_are_in_the_alliance_offset() {
        let cutoff = Cutoff::parse("00:00", "+08:00").unwrap();
        // 2026-12-04T10:05:09Z is 18:05:09 in Shanghai.
        let at_ms = 1_796_378_709_000;
        assert_eq!(minute(&cutoff, at_ms), "2026-12-04 18:05");
        assert_eq!(second(&cutoff, at_ms), "2026-12-04 18:05:09 +08:00");
    }
}
