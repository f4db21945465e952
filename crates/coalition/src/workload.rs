//! The mall day: one profile of a large mall's traffic (see `shared/workload-mall-day.md`)
//! that the demo and the benchmark both read, and a deterministic generator that turns it
//! into signed envelopes with the planted faults the profile names.

use coalition_grpc::client::MerchantSigner;
use coalition_grpc::pb;
use ed25519_dalek::SigningKey;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// The figures of one mall's day. Change them here, not in the demo or the benchmark.
#[derive(Debug, Clone)]
pub struct MallDayProfile {
    pub tenants: usize,
    pub restaurants: usize,
    pub cinemas: usize,
    pub parking_operators: usize,
    pub members_active: usize,
    /// (hour of day, share of the day's traffic in percent); sums to 100.
    pub hourly_share_percent: [(u32, u32); 12],
    pub earns: usize,
    /// Percent of earns at tenants; the rest at restaurants.
    pub earn_tenant_percent: u32,
    pub burns: usize,
    /// Percent of burns at the cinema and at parking; the rest at tenants.
    pub burn_cinema_percent: u32,
    pub burn_parking_percent: u32,
    /// The cinema's release-night burst: burns within 15 minutes at 19:30.
    pub cinema_burst_burns: usize,
    /// Faults, per 10,000 submissions.
    pub retry_same_body_per_10000: u32,
    pub retry_changed_body_per_10000: u32,
    pub bad_signature_per_10000: u32,
    pub unknown_member_per_10000: u32,
    pub burn_beyond_balance_per_10000: u32,
}

impl Default for MallDayProfile {
    fn default() -> Self {
        Self {
            tenants: 180,
            restaurants: 35,
            cinemas: 1,
            parking_operators: 1,
            members_active: 40_000,
            hourly_share_percent: [
                (10, 4),
                (11, 6),
                (12, 11),
                (13, 10),
                (14, 8),
                (15, 8),
                (16, 8),
                (17, 9),
                (18, 12),
                (19, 11),
                (20, 8),
                (21, 5),
            ],
            earns: 60_000,
            earn_tenant_percent: 70,
            burns: 12_000,
            burn_cinema_percent: 45,
            burn_parking_percent: 40,
            cinema_burst_burns: 3_000,
            retry_same_body_per_10000: 100,
            retry_changed_body_per_10000: 5,
            bad_signature_per_10000: 10,
            unknown_member_per_10000: 5,
            burn_beyond_balance_per_10000: 20,
        }
    }
}

impl MallDayProfile {
    /// The same day with traffic and members multiplied by `factor` (partners unchanged).
    pub fn scaled(factor: f64) -> Self {
        let base = Self::default();
        let scale = |n: usize| ((n as f64 * factor).round() as usize).max(1);
        Self {
            members_active: scale(base.members_active),
            earns: scale(base.earns),
            burns: scale(base.burns),
            cinema_burst_burns: scale(base.cinema_burst_burns),
            ..base
        }
    }
}

/// A merchant's demo key, derived from its id so every run of the demo uses the same keys.
fn seed_for(label: &str) -> [u8; 32] {
    Sha256::digest(format!("coalition demo key/{label}").as_bytes()).into()
}

/// A partner of the demo day.
#[derive(Clone)]
pub struct DayMerchant {
    pub signer: MerchantSigner,
    pub name: String,
    pub category: pb::MerchantCategory,
    /// What it pays per point it issues, in minor units (fen).
    pub issue_price: String,
    /// What it is paid per point redeemed there, in minor units (fen).
    pub redeem_price: String,
}

/// The demo's base earn rate: one point per yuan (100 fen) spent.
pub const EARN_POINTS_PER_MINOR: &str = "0.01";

/// The demo's terms by category: a point is worth about one fen; issuers pay a margin over
/// it, redeemers are paid a little under it, and the difference funds the alliance.
fn prices(category: pb::MerchantCategory) -> (&'static str, &'static str) {
    match category {
        pb::MerchantCategory::Restaurant => ("1.08", "0.95"),
        pb::MerchantCategory::Cinema => ("1.05", "0.92"),
        pb::MerchantCategory::Parking => ("1.05", "0.90"),
        _ => ("1.05", "0.95"),
    }
}

/// What the submissions should produce, counted as the generator planted them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub unique_valid: usize,
    pub duplicates: usize,
    pub bad_signatures: usize,
    pub unknown_members: usize,
    pub burns_beyond_balance: usize,
    pub changed_body_retries: usize,
    /// Follow-ups, all valid: parking exits (captures), cancelled parking entries (voids),
    /// purchase refunds (of which some at another tenant) and cancelled cinema tickets.
    pub captures: usize,
    pub voids: usize,
    pub refunds: usize,
    pub refunds_elsewhere: usize,
    pub cancelled_tickets: usize,
}

/// The generated day.
pub struct Day {
    pub merchants: Vec<DayMerchant>,
    pub members: Vec<String>,
    /// Points members bring into the day (earned on earlier days), submitted first.
    pub carry_in: Vec<pb::Envelope>,
    /// The day's submissions in time order, faults included. Parking entries are holds.
    pub traffic: Vec<pb::Envelope>,
    /// What refers to the day's transactions, sent once the day is cleared: parking exits
    /// and voids for the holds, refunds of purchases, cancelled tickets.
    pub follow_ups: Vec<pb::Envelope>,
    pub expected: Expected,
}

/// One planned transaction before signing.
struct Planned {
    at_ms: i64,
    merchant: usize,
    body: pb::TransactionBody,
    bad_signature: bool,
}

const HOUR_MS: i64 = 3_600_000;

/// A spend in minor units from a log-normal distribution with the given median, clamped.
/// Floating point only shapes test traffic; every amount becomes an integer at once.
fn spend_minor(rng: &mut SmallRng, median_yuan: f64, min_yuan: i64, max_yuan: i64) -> i64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let yuan = (median_yuan * (0.8 * normal).exp()).round() as i64;
    yuan.clamp(min_yuan, max_yuan) * 100
}

/// Generates the day. `day_end_ms` is 22:00 of the simulated day; it should be close to the
/// server's clock so every submission lies within the offline window.
pub fn generate(profile: &MallDayProfile, seed: u64, day_end_ms: i64) -> Day {
    generate_day(profile, seed, day_end_ms, 0)
}

/// Generates day `day_index` of a run of days: its transaction ids carry the day (`d7-…`)
/// so days never reuse them, and its active members are a window of the enrolled ones that
/// moves by half a day's members each day, so members recur on some days and not others.
/// Day 0 is exactly `generate`'s day.
pub fn generate_day(profile: &MallDayProfile, seed: u64, day_end_ms: i64, day_index: u32) -> Day {
    let prefix = if day_index == 0 {
        String::new()
    } else {
        format!("d{day_index}-")
    };
    let member_offset = day_index as usize * profile.members_active.div_ceil(2);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut merchants = Vec::new();
    let mut add = |id: String, name: String, category: pb::MerchantCategory| {
        let key = SigningKey::from_bytes(&seed_for(&id));
        let (issue_price, redeem_price) = prices(category);
        merchants.push(DayMerchant {
            signer: MerchantSigner::new(id, "key-1", key),
            name,
            category,
            issue_price: issue_price.into(),
            redeem_price: redeem_price.into(),
        });
    };
    for n in 1..=profile.tenants {
        add(
            format!("tenant-{n:03}"),
            format!("Mall tenant {n}"),
            pb::MerchantCategory::MallTenant,
        );
    }
    for n in 1..=profile.restaurants {
        add(
            format!("restaurant-{n:02}"),
            format!("Restaurant {n}"),
            pb::MerchantCategory::Restaurant,
        );
    }
    for n in 1..=profile.cinemas {
        add(
            format!("cinema-{n}"),
            format!("Cinema {n} (10 screens)"),
            pb::MerchantCategory::Cinema,
        );
    }
    for n in 1..=profile.parking_operators {
        add(
            format!("parking-{n}"),
            format!("Parking operator {n}"),
            pb::MerchantCategory::Parking,
        );
    }
    let tenants = 0..profile.tenants;
    let restaurants = profile.tenants..profile.tenants + profile.restaurants;
    let cinema = profile.tenants + profile.restaurants;
    let parking = cinema + profile.cinemas;

    let members: Vec<String> = (member_offset + 1..=member_offset + profile.members_active)
        .map(|n| format!("member-{n:06}"))
        .collect();
    let day_start_ms = day_end_ms - 12 * HOUR_MS;
    let body = |merchant: &DayMerchant,
                id: String,
                kind: pb::TransactionKind,
                member: &str,
                points: i64,
                spend: Option<i64>,
                at_ms: i64,
                store: usize| {
        pb::TransactionBody {
            merchant_id: merchant.signer.merchant_id.clone(),
            merchant_transaction_id: format!("{prefix}{id}"),
            kind: kind as i32,
            member_id: member.to_owned(),
            points,
            spend_minor: spend,
            occurred_at_unix_ms: at_ms,
            store_id: format!("store-{store}"),
            terminal_id: format!("pos-{}", store % 7 + 1),
            refers_to_transaction_id: String::new(),
            refers_to_merchant_id: String::new(),
            legacy_units: 0,
        }
    };

    // Carry-in: every active member holds points from earlier days.
    let mut available: Vec<i64> = Vec::with_capacity(members.len());
    let mut carry_in = Vec::with_capacity(members.len());
    for (index, member) in members.iter().enumerate() {
        let merchant = rng.random_range(tenants.clone());
        let points = rng.random_range(500..=12_000);
        available.push(points);
        let at_ms = day_start_ms - 24 * HOUR_MS + rng.random_range(0..12 * HOUR_MS);
        let planned = body(
            &merchants[merchant],
            format!("carry-{index:06}"),
            pb::TransactionKind::Earn,
            member,
            points,
            None,
            at_ms,
            merchant,
        );
        carry_in.push(merchants[merchant].signer.envelope(&planned));
    }

    let carried_in = available.clone();

    // A time within the day following the hourly shares.
    let hour_weights: Vec<(u32, u32)> = profile.hourly_share_percent.to_vec();
    let total_weight: u32 = hour_weights.iter().map(|(_, w)| w).sum();
    let time_in_day = |rng: &mut SmallRng| {
        let mut pick = rng.random_range(0..total_weight);
        let mut hour = 10;
        for (h, weight) in &hour_weights {
            if pick < *weight {
                hour = *h;
                break;
            }
            pick -= weight;
        }
        day_start_ms + i64::from(hour - 10) * HOUR_MS + rng.random_range(0..HOUR_MS)
    };

    let mut planned: Vec<Planned> = Vec::new();
    let mut earned_today = vec![0i64; members.len()];
    for index in 0..profile.earns {
        let at_ms = time_in_day(&mut rng);
        let at_tenant = rng.random_range(0..100) < profile.earn_tenant_percent;
        let (merchant, spend) = if at_tenant {
            (
                rng.random_range(tenants.clone()),
                spend_minor(&mut rng, 180.0, 20, 3_000),
            )
        } else {
            (
                rng.random_range(restaurants.clone()),
                spend_minor(&mut rng, 150.0, 40, 800),
            )
        };
        let member = rng.random_range(0..members.len());
        // Earns by spend: the POS sends the amount and no points; the server awards one
        // point per yuan (the demo's base earn rate, `EARN_POINTS_PER_MINOR`), rounded down.
        let points = spend / 100;
        earned_today[member] += points;
        planned.push(Planned {
            at_ms,
            merchant,
            body: body(
                &merchants[merchant],
                format!("earn-{index:07}"),
                pb::TransactionKind::Earn,
                &members[member],
                0,
                Some(spend),
                at_ms,
                merchant,
            ),
            bad_signature: false,
        });
    }
    let mut expected = Expected::default();
    let burst_start_ms = day_start_ms + 9 * HOUR_MS + HOUR_MS / 2;
    let cinema_burns = profile.burns * profile.burn_cinema_percent as usize / 100;
    let parking_burns = profile.burns * profile.burn_parking_percent as usize / 100;
    for index in 0..profile.burns {
        let (merchant, points, at_ms) = if index < cinema_burns {
            let at_ms = if index < profile.cinema_burst_burns.min(cinema_burns) {
                burst_start_ms + rng.random_range(0..HOUR_MS / 4)
            } else {
                time_in_day(&mut rng)
            };
            (cinema, rng.random_range(2_000..=6_000), at_ms)
        } else if index < cinema_burns + parking_burns {
            (
                parking,
                rng.random_range(300..=1_200),
                time_in_day(&mut rng),
            )
        } else {
            (
                rng.random_range(tenants.clone()),
                rng.random_range(100..=2_000),
                time_in_day(&mut rng),
            )
        };
        // Burns draw only on carry-in points, so the order in which concurrent clients
        // deliver the day's earns cannot make a planned burn fail.
        let member = (0..50)
            .map(|_| rng.random_range(0..members.len()))
            .find(|&m| available[m] >= points);
        let Some(member) = member else { continue };
        available[member] -= points;
        // Parking takes points as a hold at the entry gate, captured at the exit.
        let (kind, id) = if merchant == parking {
            (pb::TransactionKind::Hold, format!("gate-in-{index:07}"))
        } else {
            (pb::TransactionKind::Burn, format!("burn-{index:07}"))
        };
        planned.push(Planned {
            at_ms,
            merchant,
            body: body(
                &merchants[merchant],
                id,
                kind,
                &members[member],
                points,
                None,
                at_ms,
                merchant,
            ),
            bad_signature: false,
        });
    }
    let valid = planned.len();
    expected.unique_valid = valid;
    let follow_ups = plan_follow_ups(
        &mut rng,
        &planned,
        &merchants,
        tenants.clone(),
        day_end_ms,
        &mut expected,
        &prefix,
    );
    let faults = |per_10000: u32| valid * per_10000 as usize / 10_000;

    // Burns beyond the balance: more than the member could have even after all of today's earns.
    for index in 0..faults(profile.burn_beyond_balance_per_10000) {
        let member = rng.random_range(0..members.len());
        // Beyond what the member held at any moment of the day, whatever the order of
        // delivery: everything carried in and earned, before any burn.
        let points = carried_in[member] + earned_today[member] + rng.random_range(1..=500);
        let at_ms = time_in_day(&mut rng);
        planned.push(Planned {
            at_ms,
            merchant: parking,
            body: body(
                &merchants[parking],
                format!("overdraw-{index:05}"),
                pb::TransactionKind::Burn,
                &members[member],
                points,
                None,
                at_ms,
                parking,
            ),
            bad_signature: false,
        });
        expected.burns_beyond_balance += 1;
    }
    // Earns for members who are not enrolled.
    for index in 0..faults(profile.unknown_member_per_10000) {
        let merchant = rng.random_range(tenants.clone());
        let at_ms = time_in_day(&mut rng);
        planned.push(Planned {
            at_ms,
            merchant,
            body: body(
                &merchants[merchant],
                format!("stranger-{index:05}"),
                pb::TransactionKind::Earn,
                &format!("not-enrolled-{index}"),
                100,
                Some(10_000),
                at_ms,
                merchant,
            ),
            bad_signature: false,
        });
        expected.unknown_members += 1;
    }
    // Bad signatures: a valid-looking earn whose signature is damaged in transit.
    for index in 0..faults(profile.bad_signature_per_10000) {
        let merchant = rng.random_range(restaurants.clone());
        let at_ms = time_in_day(&mut rng);
        planned.push(Planned {
            at_ms,
            merchant,
            body: body(
                &merchants[merchant],
                format!("damaged-{index:05}"),
                pb::TransactionKind::Earn,
                &members[index % members.len()],
                50,
                None,
                at_ms,
                merchant,
            ),
            bad_signature: true,
        });
        expected.bad_signatures += 1;
    }
    // Network retries (the same body again, a little later) and POS bugs (same id, changed body).
    for _ in 0..faults(profile.retry_same_body_per_10000) {
        let original = rng.random_range(0..valid);
        let at_ms = planned[original].at_ms + rng.random_range(1_000..60_000);
        planned.push(Planned {
            at_ms,
            merchant: planned[original].merchant,
            body: planned[original].body.clone(),
            bad_signature: false,
        });
        expected.duplicates += 1;
    }
    let mut changed = std::collections::HashSet::new();
    for _ in 0..faults(profile.retry_changed_body_per_10000) {
        let original = rng.random_range(0..valid);
        if planned[original].body.kind != pb::TransactionKind::Earn as i32
            || !changed.insert(original)
        {
            continue;
        }
        let mut body = planned[original].body.clone();
        body.points += 1;
        let at_ms = planned[original].at_ms + rng.random_range(1_000..60_000);
        planned.push(Planned {
            at_ms,
            merchant: planned[original].merchant,
            body,
            bad_signature: false,
        });
        expected.changed_body_retries += 1;
    }

    planned.sort_by_key(|p| p.at_ms);
    let traffic = planned
        .into_iter()
        .map(|planned| {
            let mut envelope = merchants[planned.merchant].signer.envelope(&planned.body);
            if planned.bad_signature {
                envelope.signature[7] ^= 0x55;
            }
            envelope
        })
        .collect();
    Day {
        merchants,
        members,
        carry_in,
        traffic,
        follow_ups,
        expected,
    }
}

/// Percent of parking holds voided (the driver left without parking) rather than captured.
const VOID_PERCENT: u32 = 5;
/// Refunds per 100 earns, cancelled tickets per 100 cinema burns, and the percent of refunds
/// made at another tenant than the one that sold (see the workload profile).
const REFUND_PERCENT: u32 = 2;
const CANCELLED_TICKET_PERCENT: u32 = 1;
const REFUND_ELSEWHERE_PERCENT: u32 = 10;

/// Plans what refers to the day's valid transactions: every parking hold is captured at the
/// exit (part of what it held) or voided; some purchases are refunded, fully or in part,
/// some at another tenant; some cinema tickets are cancelled.
fn plan_follow_ups(
    rng: &mut SmallRng,
    planned: &[Planned],
    merchants: &[DayMerchant],
    tenants: std::ops::Range<usize>,
    day_end_ms: i64,
    expected: &mut Expected,
    prefix: &str,
) -> Vec<pb::Envelope> {
    let mut follow_ups = Vec::new();
    for (index, original) in planned.iter().enumerate() {
        let body = &original.body;
        let later = |rng: &mut SmallRng| {
            (original.at_ms + rng.random_range(10 * 60_000..3 * HOUR_MS)).min(day_end_ms)
        };
        let mut follow_up = pb::TransactionBody {
            merchant_id: body.merchant_id.clone(),
            member_id: body.member_id.clone(),
            spend_minor: None,
            store_id: body.store_id.clone(),
            terminal_id: body.terminal_id.clone(),
            refers_to_transaction_id: body.merchant_transaction_id.clone(),
            ..Default::default()
        };
        let mut signer = original.merchant;
        match pb::TransactionKind::try_from(body.kind) {
            Ok(pb::TransactionKind::Hold) => {
                follow_up.occurred_at_unix_ms = later(rng);
                if rng.random_range(0..100) < VOID_PERCENT {
                    follow_up.kind = pb::TransactionKind::Void as i32;
                    follow_up.merchant_transaction_id = format!("{prefix}gate-void-{index:07}");
                    expected.voids += 1;
                } else {
                    follow_up.kind = pb::TransactionKind::Capture as i32;
                    follow_up.merchant_transaction_id = format!("{prefix}gate-out-{index:07}");
                    follow_up.points = (body.points * rng.random_range(40..=100) / 100).max(1);
                    expected.captures += 1;
                }
            }
            Ok(pb::TransactionKind::Earn) if rng.random_range(0..100) < REFUND_PERCENT => {
                follow_up.occurred_at_unix_ms = later(rng);
                follow_up.kind = pb::TransactionKind::Reversal as i32;
                follow_up.merchant_transaction_id = format!("{prefix}refund-{index:07}");
                // The points the earn by spend was awarded (see `EARN_POINTS_PER_MINOR`).
                let earned = body.spend_minor.unwrap_or(0) / 100;
                follow_up.points = if rng.random_range(0..100) < 70 {
                    earned
                } else {
                    (earned / 2).max(1)
                };
                if tenants.contains(&original.merchant)
                    && rng.random_range(0..100) < REFUND_ELSEWHERE_PERCENT
                {
                    // Bought at one tenant, returned at another.
                    let mut elsewhere = rng.random_range(tenants.clone());
                    if elsewhere == original.merchant {
                        elsewhere = tenants.start + (elsewhere + 1 - tenants.start) % tenants.len();
                    }
                    signer = elsewhere;
                    follow_up.merchant_id = merchants[elsewhere].signer.merchant_id.clone();
                    follow_up.refers_to_merchant_id = body.merchant_id.clone();
                    expected.refunds_elsewhere += 1;
                }
                expected.refunds += 1;
            }
            Ok(pb::TransactionKind::Burn)
                if merchants[original.merchant].category == pb::MerchantCategory::Cinema
                    && rng.random_range(0..100) < CANCELLED_TICKET_PERCENT =>
            {
                follow_up.occurred_at_unix_ms = later(rng);
                follow_up.kind = pb::TransactionKind::Reversal as i32;
                follow_up.merchant_transaction_id = format!("{prefix}cancel-{index:07}");
                follow_up.points = body.points;
                expected.cancelled_tickets += 1;
            }
            _ => continue,
        }
        follow_ups.push((follow_up.occurred_at_unix_ms, signer, follow_up));
    }
    follow_ups.sort_by_key(|(at_ms, _, _)| *at_ms);
    follow_ups
        .into_iter()
        .map(|(_, signer, body)| merchants[signer].signer.envelope(&body))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaled_day_plants_the_faults_it_promises() {
        let day = generate(&MallDayProfile::scaled(0.1), 7, 1_800_000_000_000);
        assert_eq!(day.merchants.len(), 217);
        assert_eq!(day.members.len(), 4_000);
        assert_eq!(day.carry_in.len(), 4_000);
        let expected = &day.expected;
        assert!(expected.unique_valid > 7_000, "{expected:?}");
        assert!(
            expected.duplicates > 0
                && expected.bad_signatures > 0
                && expected.burns_beyond_balance > 0
        );
        let total = expected.unique_valid
            + expected.duplicates
            + expected.bad_signatures
            + expected.unknown_members
            + expected.burns_beyond_balance
            + expected.changed_body_retries;
        assert_eq!(day.traffic.len(), total);
        // Every parking hold (40% of 1,200 burns) is followed by a capture or a void; refunds and cancellations
        // are planted too, some refunds at another tenant.
        assert_eq!(
            day.follow_ups.len(),
            expected.captures + expected.voids + expected.refunds + expected.cancelled_tickets
        );
        assert!(
            expected.captures + expected.voids == 480 && expected.voids > 0,
            "{expected:?}"
        );
        assert!(
            expected.refunds > 50
                && expected.refunds_elsewhere > 0
                && expected.cancelled_tickets > 0,
            "{expected:?}"
        );
        // Deterministic: the same seed gives the same day.
        let again = generate(&MallDayProfile::scaled(0.1), 7, 1_800_000_000_000);
        assert_eq!(again.traffic, day.traffic);
    }
}
