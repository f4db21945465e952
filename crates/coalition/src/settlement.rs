//! Printing a settlement as the finance team reads it: a table of net positions, or JSON.

use std::fmt::Write;

use coalition_domain::settlement::{MatrixCell, MerchantNet, OperatorNet, Settlement};
use coalition_grpc::pb;

/// The wire settlement as the domain's (serialisable) one.
pub fn from_wire(wire: &pb::Settlement) -> Settlement {
    let operator = wire.operator.unwrap_or_default();
    Settlement {
        period: wire.period.clone(),
        start_ms: wire.start_unix_ms,
        end_ms: wire.end_unix_ms,
        currency: wire.currency.clone(),
        first_sequence: wire.first_sequence,
        last_sequence: wire.last_sequence,
        previous_hash: wire.previous_hash.clone(),
        head_hash: wire.head_hash.clone(),
        merchants: wire
            .merchants
            .iter()
            .map(|net| MerchantNet {
                merchant_id: net.merchant_id.clone(),
                points_issued: net.points_issued,
                points_redeemed: net.points_redeemed,
                issuance_minor: net.issuance_minor,
                issuance_reversed_minor: net.issuance_reversed_minor,
                redemptions_minor: net.redemptions_minor,
                redemptions_reversed_minor: net.redemptions_reversed_minor,
                fees_minor: net.fees_minor,
                funding_minor: net.funding_minor,
                breakage_minor: net.breakage_minor,
                breakage_share: net.breakage_share.clone(),
                breakage_share_minor: net.breakage_share_minor,
                net_minor: net.net_minor,
            })
            .collect(),
        operator: OperatorNet {
            float_minor: operator.float_minor,
            fees_minor: operator.fees_minor,
            rounding_minor: operator.rounding_minor,
            cash_minor: operator.cash_minor,
            breakage_kept_minor: operator.breakage_kept_minor,
            net_minor: operator.net_minor,
        },
        matrix: wire
            .matrix
            .iter()
            .map(|cell| MatrixCell {
                issuer: cell.issuer_id.clone(),
                redeemer: cell.redeemer_id.clone(),
                points: cell.points,
                value_minor: cell.value_minor,
            })
            .collect(),
    }
}

fn status_name(status: i32) -> &'static str {
    match pb::SettlementStatus::try_from(status) {
        Ok(pb::SettlementStatus::Open) => "open",
        Ok(pb::SettlementStatus::Closed) => "closed, not finalised",
        Ok(pb::SettlementStatus::Finalised) => "finalised",
        _ => "unknown",
    }
}

/// The settlement and its status as pretty JSON.
pub fn settlement_json(wire: &pb::Settlement) -> anyhow::Result<String> {
    let value = serde_json::json!({
        "status": status_name(wire.status),
        "closing_sequence": wire.closing_sequence,
        "finalised_at_ms": (wire.finalised_at_unix_ms != 0).then_some(wire.finalised_at_unix_ms),
        "settlement": from_wire(wire),
    });
    Ok(serde_json::to_string_pretty(&value)?)
}

/// The net positions as a table, amounts in minor units of the currency; with `limit`, only
/// the merchants with the largest nets and the matrix's largest cells (all when `None`).
pub fn settlement_table(wire: &pb::Settlement, limit: Option<usize>) -> String {
    let settlement = from_wire(wire);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "settlement period {} ({}), entries accepted in [{}, {}) Unix ms: {}",
        settlement.period,
        settlement.currency,
        settlement.start_ms,
        settlement.end_ms,
        status_name(wire.status)
    );
    let _ = writeln!(
        out,
        "entries {}..{}, chain {} -> {}",
        settlement.first_sequence,
        settlement.last_sequence,
        short(&settlement.previous_hash),
        short(&settlement.head_hash)
    );
    if let Some(sequence) = wire.closing_sequence {
        let _ = writeln!(out, "closing entry {sequence}");
    }
    out.push_str(&net_positions(&settlement, limit));
    if cells_left(&settlement, limit) > 0 {
        let _ = writeln!(
            out,
            "... and {} more cells (all of them in matrix.csv of the export)",
            cells_left(&settlement, limit)
        );
    }
    out
}

fn cells_left(settlement: &Settlement, limit: Option<usize>) -> usize {
    limit.map_or(0, |rows| settlement.matrix.len().saturating_sub(rows))
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(16)]
}

/// The merchants' and the operator's nets, one line each, and the bilateral matrix.
pub fn net_positions(settlement: &Settlement, limit: Option<usize>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "merchant",
        "issued",
        "redeemed",
        "issuance",
        "redemptions",
        "fees",
        "funding",
        "breakage",
        "share",
        "net (minor)"
    );
    let total: i64 = settlement
        .merchants
        .iter()
        .map(|net| net.net_minor)
        .sum::<i64>()
        + settlement.operator.net_minor;
    let mut merchants: Vec<&MerchantNet> = settlement.merchants.iter().collect();
    if let Some(rows) = limit {
        merchants.sort_by_key(|net| std::cmp::Reverse(net.net_minor.abs()));
        merchants.truncate(rows);
    }
    for net in merchants {
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>14}",
            net.merchant_id,
            net.points_issued,
            net.points_redeemed,
            net.issuance_minor + net.issuance_reversed_minor,
            net.redemptions_minor + net.redemptions_reversed_minor,
            net.fees_minor,
            net.funding_minor,
            net.breakage_minor,
            net.breakage_share_minor,
            net.net_minor
        );
    }
    if let Some(rows) = limit
        && settlement.merchants.len() > rows
    {
        let _ = writeln!(
            out,
            "... and {} more merchants, by smaller net (all of them in settlement.csv of the export)",
            settlement.merchants.len() - rows
        );
    }
    let operator = &settlement.operator;
    let _ = writeln!(
        out,
        "{:<22} float {} fees {} rounding {} cash {} breakage kept {} {:>14}",
        "operator",
        operator.float_minor,
        operator.fees_minor,
        operator.rounding_minor,
        operator.cash_minor,
        operator.breakage_kept_minor,
        operator.net_minor
    );
    let _ = writeln!(out, "{:<22} {:>14}", "sum of nets", total);
    if !settlement.matrix.is_empty() {
        let _ = writeln!(
            out,
            "{:<22} {:<22} {:>10} {:>14}",
            "issuer", "redeemed at", "points", "value (minor)"
        );
        let mut cells: Vec<&MatrixCell> = settlement.matrix.iter().collect();
        if let Some(rows) = limit {
            cells.sort_by_key(|cell| std::cmp::Reverse(cell.value_minor));
            cells.truncate(rows);
        }
        for cell in &cells {
            let _ = writeln!(
                out,
                "{:<22} {:<22} {:>10} {:>14}",
                cell.issuer, cell.redeemer, cell.points, cell.value_minor
            );
        }
    }
    out
}
