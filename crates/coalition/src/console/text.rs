//! The console's words in its two languages, Simplified Chinese (the finance teams' first
//! language) and English, and how a request's language is chosen: the language cookie set
//! by the switch, else the browser's `Accept-Language`, else Chinese.

/// A language of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Chinese,
    English,
}

impl Language {
    /// The BCP 47 tag, as in `<html lang>` and the language cookie.
    pub fn tag(self) -> &'static str {
        match self {
            Language::Chinese => "zh-CN",
            Language::English => "en",
        }
    }

    pub fn from_tag(tag: &str) -> Option<Language> {
        let primary = tag.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "zh" => Some(Language::Chinese),
            "en" => Some(Language::English),
            _ => None,
        }
    }

    /// The other language, for the switch.
    pub fn other(self) -> Language {
        match self {
            Language::Chinese => Language::English,
            Language::English => Language::Chinese,
        }
    }

    /// The language of a request: the cookie, else the best `Accept-Language` entry the
    /// console speaks (by quality, then order), else Chinese.
    pub fn of_request(cookie: Option<&str>, accept_language: Option<&str>) -> Language {
        if let Some(language) = cookie.and_then(Language::from_tag) {
            return language;
        }
        let mut best: Option<(u32, Language)> = None;
        for item in accept_language.unwrap_or_default().split(',') {
            let mut parts = item.split(';');
            let Some(language) = parts.next().and_then(Language::from_tag) else {
                continue;
            };
            // Quality in thousandths, so that comparing needs no floating point.
            let quality = parts
                .find_map(|part| part.trim().strip_prefix("q="))
                .map_or(1000, parse_quality);
            if quality > 0 && best.is_none_or(|(best_quality, _)| quality > best_quality) {
                best = Some((quality, language));
            }
        }
        best.map_or(Language::Chinese, |(_, language)| language)
    }

    pub fn texts(self) -> &'static Texts {
        match self {
            Language::Chinese => &CHINESE,
            Language::English => &ENGLISH,
        }
    }
}

/// `q=0.8` as 800; anything unreadable as 0 (not acceptable).
fn parse_quality(text: &str) -> u32 {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let whole: u32 = match whole {
        "0" => 0,
        "1" => 1000,
        _ => return 0,
    };
    let digits: String = fraction.chars().take(3).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return 0;
    }
    let fraction: u32 = format!("{digits:0<3}").parse().unwrap_or(0);
    (whole + fraction).min(1000)
}

/// Every word the console shows.
pub struct Texts {
    pub language_name: &'static str,
    pub product: &'static str,
    pub nav_overview: &'static str,
    pub nav_settlement: &'static str,
    pub nav_merchants: &'static str,
    pub nav_members: &'static str,
    pub nav_reconciliation: &'static str,
    pub nav_exports: &'static str,
    pub sign_in: &'static str,
    pub sign_out: &'static str,
    pub admin_token: &'static str,
    pub sign_in_hint: &'static str,
    pub sign_in_refused: &'static str,
    pub sign_in_full: &'static str,
    pub sign_in_not_configured: &'static str,
    pub session_ended: &'static str,
    pub form_expired: &'static str,
    pub open_period: &'static str,
    pub period: &'static str,
    pub status: &'static str,
    pub status_open: &'static str,
    pub status_closed: &'static str,
    pub status_finalised: &'static str,
    pub issuance: &'static str,
    pub redemptions: &'static str,
    pub reversals: &'static str,
    pub outstanding_points: &'static str,
    pub breakage: &'static str,
    pub fees: &'static str,
    pub points_issued: &'static str,
    pub points_redeemed: &'static str,
    pub money_positions: &'static str,
    pub operator_float: &'static str,
    pub operator_fees: &'static str,
    pub operator_rounding: &'static str,
    pub operator_cash: &'static str,
    pub operator_breakage: &'static str,
    pub operator_net: &'static str,
    pub to_pay_merchants: &'static str,
    pub to_collect: &'static str,
    pub submissions_per_hour: &'static str,
    pub hour: &'static str,
    pub earns: &'static str,
    pub burns: &'static str,
    pub other_entries: &'static str,
    pub entries: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub sequences: &'static str,
    pub head_hash: &'static str,
    pub preview: &'static str,
    pub show: &'static str,
    pub finalise: &'static str,
    pub finalise_confirm_title: &'static str,
    pub finalise_confirm_text: &'static str,
    pub finalise_not_closed: &'static str,
    pub finalised_now: &'static str,
    pub finalised_before: &'static str,
    pub cancel: &'static str,
    pub confirm: &'static str,
    pub net_positions: &'static str,
    pub merchant: &'static str,
    pub merchants_count: &'static str,
    pub net: &'static str,
    pub who_pays: &'static str,
    pub operator_pays: &'static str,
    pub merchant_pays: &'static str,
    pub nothing_to_settle: &'static str,
    pub matrix_title: &'static str,
    pub matrix_hint: &'static str,
    pub issuer: &'static str,
    pub redeemer: &'static str,
    pub all_others: &'static str,
    pub statement: &'static str,
    pub statement_lines_shown: &'static str,
    pub kind: &'static str,
    pub accepted_at: &'static str,
    pub transaction: &'static str,
    pub points: &'static str,
    pub amount: &'static str,
    pub fee: &'static str,
    pub total: &'static str,
    pub download_csv: &'static str,
    pub payments: &'static str,
    pub payments_file: &'static str,
    pub pain_001: &'static str,
    pub payments_only_finalised: &'static str,
    pub no_payments: &'static str,
    pub record_payout: &'static str,
    pub reference: &'static str,
    pub payout_recorded: &'static str,
    pub still_payable: &'static str,
    pub finalised_periods: &'static str,
    pub none: &'static str,
    pub error: &'static str,
    pub not_found: &'static str,
    pub back: &'static str,
}

pub static ENGLISH: Texts = Texts {
    language_name: "English",
    product: "Coalition clearing console",
    nav_overview: "Overview",
    nav_settlement: "Settlement",
    nav_merchants: "Merchants",
    nav_members: "Members",
    nav_reconciliation: "Reconciliation",
    nav_exports: "Exports",
    sign_in: "Sign in",
    sign_out: "Sign out",
    admin_token: "Admin token",
    sign_in_hint: "Sign in with the operator's admin token (admin_token in the server's configuration).",
    sign_in_refused: "That is not the admin token. Nothing was opened.",
    sign_in_full: "Too many open sessions; try again when one has ended.",
    sign_in_not_configured: "The server has no admin_token configured, so nobody can sign in.",
    session_ended: "Your session has ended. Sign in again.",
    form_expired: "This form is no longer valid (its security token is missing or wrong). Nothing was changed; reload the page and try again.",
    open_period: "Open period",
    period: "Period",
    status: "Status",
    status_open: "open",
    status_closed: "closed, not finalised",
    status_finalised: "finalised",
    issuance: "Issuance",
    redemptions: "Redemptions",
    reversals: "Reversals",
    outstanding_points: "Outstanding points",
    breakage: "Breakage",
    fees: "Fees",
    points_issued: "Points issued",
    points_redeemed: "Points redeemed",
    money_positions: "Money positions of the period",
    operator_float: "Operator float",
    operator_fees: "Operator fees",
    operator_rounding: "Rounding",
    operator_cash: "Operator cash",
    operator_breakage: "Breakage kept by the operator",
    operator_net: "Operator net",
    to_pay_merchants: "Payable to merchants",
    to_collect: "To collect from merchants",
    submissions_per_hour: "Entries per hour",
    hour: "Hour",
    earns: "Earns",
    burns: "Burns",
    other_entries: "Other",
    entries: "Entries",
    from: "From",
    to: "To",
    sequences: "Sequences",
    head_hash: "Chain head",
    preview: "Preview",
    show: "Show",
    finalise: "Finalise…",
    finalise_confirm_title: "Finalise this period?",
    finalise_confirm_text: "Finalising books the closing entry with these totals and makes the period immutable. It cannot be undone.",
    finalise_not_closed: "This period is still open: it can be finalised after its cut-off.",
    finalised_now: "The period is finalised: its closing entry is booked.",
    finalised_before: "The period was already finalised; nothing was booked.",
    cancel: "Cancel",
    confirm: "Finalise the period",
    net_positions: "Net positions",
    merchant: "Merchant",
    merchants_count: "merchants",
    net: "Net",
    who_pays: "Who pays",
    operator_pays: "Operator pays the merchant",
    merchant_pays: "Merchant pays the operator",
    nothing_to_settle: "Nothing to settle",
    matrix_title: "Whose points were redeemed where",
    matrix_hint: "Rows: the issuer of the points; columns: where they were redeemed; redemption value. The largest issuers and redeemers, the rest together.",
    issuer: "Issuer",
    redeemer: "Redeemer",
    all_others: "All others",
    statement: "Statement",
    statement_lines_shown: "lines shown of",
    kind: "Kind",
    accepted_at: "Accepted at",
    transaction: "Transaction",
    points: "Points",
    amount: "Amount",
    fee: "Fee",
    total: "Total",
    download_csv: "Download CSV",
    payments: "Payments",
    payments_file: "Payments file (CSV)",
    pain_001: "Bank file (ISO 20022 pain.001)",
    payments_only_finalised: "Payments are made from finalised periods only.",
    no_payments: "Nothing is payable after this period.",
    record_payout: "Record payout",
    reference: "Bank reference",
    payout_recorded: "Payout recorded.",
    still_payable: "still payable",
    finalised_periods: "Finalised periods",
    none: "none",
    error: "Error",
    not_found: "Not found",
    back: "Back",
};

pub static CHINESE: Texts = Texts {
    language_name: "中文",
    product: "联盟积分清算控制台",
    nav_overview: "概览",
    nav_settlement: "结算",
    nav_merchants: "商户",
    nav_members: "会员",
    nav_reconciliation: "对账",
    nav_exports: "导出",
    sign_in: "登录",
    sign_out: "退出",
    admin_token: "管理员令牌",
    sign_in_hint: "请使用运营方的管理员令牌登录（服务器配置中的 admin_token）。",
    sign_in_refused: "管理员令牌不正确，未登录。",
    sign_in_full: "当前会话过多，请稍后再试。",
    sign_in_not_configured: "服务器未配置 admin_token，无法登录。",
    session_ended: "会话已结束，请重新登录。",
    form_expired: "此表单已失效（安全令牌缺失或错误），未做任何更改。请刷新页面后重试。",
    open_period: "当前账期",
    period: "账期",
    status: "状态",
    status_open: "进行中",
    status_closed: "已截止，未定稿",
    status_finalised: "已定稿",
    issuance: "发放",
    redemptions: "兑换",
    reversals: "冲正",
    outstanding_points: "未兑换积分",
    breakage: "过期积分收益",
    fees: "手续费",
    points_issued: "发放积分",
    points_redeemed: "兑换积分",
    money_positions: "本账期资金头寸",
    operator_float: "运营方沉淀资金",
    operator_fees: "运营方手续费",
    operator_rounding: "舍入差额",
    operator_cash: "运营方现金",
    operator_breakage: "运营方保留的过期收益",
    operator_net: "运营方净额",
    to_pay_merchants: "应付商户",
    to_collect: "应收商户",
    submissions_per_hour: "每小时交易笔数",
    hour: "时",
    earns: "积分发放",
    burns: "积分兑换",
    other_entries: "其他",
    entries: "分录",
    from: "起",
    to: "止",
    sequences: "序号",
    head_hash: "链头哈希",
    preview: "预览",
    show: "查看",
    finalise: "定稿…",
    finalise_confirm_title: "确认定稿此账期？",
    finalise_confirm_text: "定稿将按以下合计记入结账分录，账期随即不可更改，且无法撤销。",
    finalise_not_closed: "此账期尚未截止，截止后方可定稿。",
    finalised_now: "账期已定稿，结账分录已记账。",
    finalised_before: "该账期此前已定稿，本次未记账。",
    cancel: "取消",
    confirm: "确认定稿",
    net_positions: "轧差净额",
    merchant: "商户",
    merchants_count: "家商户",
    net: "净额",
    who_pays: "付款方向",
    operator_pays: "运营方付给商户",
    merchant_pays: "商户付给运营方",
    nothing_to_settle: "无需结算",
    matrix_title: "积分跨商户兑换矩阵",
    matrix_hint: "行：积分发放方；列：兑换地点；数值为兑换金额。仅列出金额最大的发放方与兑换方，其余合并显示。",
    issuer: "发放方",
    redeemer: "兑换方",
    all_others: "其他合计",
    statement: "对账单",
    statement_lines_shown: "行，共",
    kind: "类型",
    accepted_at: "受理时间",
    transaction: "交易号",
    points: "积分",
    amount: "金额",
    fee: "手续费",
    total: "合计",
    download_csv: "下载 CSV",
    payments: "付款",
    payments_file: "付款文件（CSV）",
    pain_001: "银行文件（ISO 20022 pain.001）",
    payments_only_finalised: "仅已定稿账期可生成付款。",
    no_payments: "本账期后无应付款项。",
    record_payout: "登记付款",
    reference: "银行流水号",
    payout_recorded: "付款已登记。",
    still_payable: "尚余应付",
    finalised_periods: "已定稿账期",
    none: "无",
    error: "错误",
    not_found: "未找到",
    back: "返回",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_language_comes_from_the_cookie_then_the_browser_then_chinese() {
        let check = |cookie: Option<&str>, accept: Option<&str>, expected: Language| {
            assert_eq!(
                Language::of_request(cookie, accept),
                expected,
                "cookie {cookie:?}, Accept-Language {accept:?}"
            );
        };
        check(Some("en"), Some("zh-CN"), Language::English);
        check(Some("zh-CN"), Some("en-US"), Language::Chinese);
        check(Some("fr"), Some("en-US,en;q=0.9"), Language::English);
        check(None, Some("en-US,en;q=0.9"), Language::English);
        check(None, Some("zh-CN,zh;q=0.9,en;q=0.8"), Language::Chinese);
        check(None, Some("fr-FR, en;q=0.5, zh;q=0.7"), Language::Chinese);
        check(None, Some("en;q=0, zh-TW;q=0.1"), Language::Chinese);
        check(None, Some("de-DE"), Language::Chinese);
        check(None, None, Language::Chinese);
    }
}
