//! The finance console in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver) against a real server on each backend with a mall day booked.
//! Sign-in (refused with a wrong token), the overview's figures against the ledger's,
//! the language switch, a finalise whose form lost its CSRF token refused, the finalise
//! itself behind its confirmation, the nets and the matrix, a statement, the payments files,
//! a payout, sign-out. The main pages are photographed at 1366×768 for docs/console.md
//! (into `CONSOLE_SCREENSHOTS_DIR` when set).
//!
//! These tests fail, never skip, when chromedriver or Chromium is missing: `.ci/run`
//! installs them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use coalition::console::percent_encode;
use coalition::demo::{ClientMix, drive, register};
use coalition::workload::{Day, MallDayProfile, generate};
use coalition_domain::settlement::Period;
use coalition_grpc::pb;
use coalition_integration_tests::{
    ADMIN_TOKEN, Backend, TestDatabase, TestServer, accepted, http_get, http_post,
    on_both_backends, rejection, test_config,
};
use fantoccini::{Client, ClientBuilder, Locator};
use prost::Message;

const HOUR_MS: i64 = 3_600_000;
const WINDOW_WIDTH: u32 = 1366;
const WINDOW_HEIGHT: u32 = 768;

/// chromedriver on a port of its own, stopped when dropped.
struct Chromedriver {
    process: Child,
    port: u16,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Chromedriver {
    async fn start() -> Chromedriver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver must be installed for the console tests \
                 (Debian: apt-get install chromium chromium-driver; .ci/run does it)",
            );
        let driver = Chromedriver { process, port };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("chromedriver did not listen on port {port}");
    }

    /// A headless Chromium whose browser asks for English first.
    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--window-size={WINDOW_WIDTH},{WINDOW_HEIGHT}"),
                ],
                "prefs": { "intl.accept_languages": "en-US,en" },
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("headless Chromium starts (Debian package chromium)");
        client
            .set_window_size(WINDOW_WIDTH, WINDOW_HEIGHT)
            .await
            .expect("window size");
        client
    }
}

/// Where screenshots go: `CONSOLE_SCREENSHOTS_DIR`, else the test's own temporary folder.
fn screenshot_dir(backend: Backend) -> Option<PathBuf> {
    // Only one backend's pictures go to the docs: they show the same pages.
    match (std::env::var_os("CONSOLE_SCREENSHOTS_DIR"), backend) {
        (Some(dir), Backend::Sqlite) => Some(PathBuf::from(dir)),
        _ => None,
    }
}

async fn screenshot(browser: &Client, backend: Backend, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: a PNG");
    let dir = screenshot_dir(backend).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("console-{backend:?}"))
    });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Clicks the element `css` names once the page shows it.
async fn click(browser: &Client, css: &str) {
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("{css}: {error}"))
        .click()
        .await
        .unwrap();
}

/// Waits until the browser is at `path` (a click's navigation may still be loading).
async fn wait_for_path(browser: &Client, path: &str) {
    for _ in 0..200 {
        if browser.current_url().await.unwrap().path() == path {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the browser is at {:?}, not {path}",
        browser.current_url().await.unwrap().path()
    );
}

/// Waits until the element `css` names shows `expected` (the page may still be the one
/// before a click), and fails with what it shows otherwise.
async fn expect_text(browser: &Client, css: &str, expected: &str) {
    let mut shown = String::new();
    for _ in 0..200 {
        if let Ok(element) = browser.find(Locator::Css(css)).await {
            shown = element.text().await.unwrap_or_default();
            if shown == expected {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = browser.current_url().await;
    panic!("{css} on {url:?} shows {shown:?}, not {expected:?}");
}

/// The text of the element `css` names, waiting for it while a page loads after a click.
async fn text_of(browser: &Client, css: &str) -> String {
    match browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element.text().await.unwrap(),
        Err(error) => {
            let url = browser.current_url().await;
            let source = browser.source().await.unwrap_or_default();
            panic!("{css} on {url:?}: {error}\n{source}")
        }
    }
}

async fn sign_in(browser: &Client, base: &str, token: &str) {
    browser.goto(&format!("{base}/sign-in")).await.unwrap();
    let field = browser.find(Locator::Id("token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    click(browser, "#sign-in").await;
}

/// `-123456` minor units of CNY as the console writes them.
fn yuan(minor: i64) -> String {
    let magnitude = minor.unsigned_abs();
    let whole = (magnitude / 100).to_string();
    let mut grouped = String::new();
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!(
        "{}¥{grouped}.{:02}",
        if minor < 0 { "-" } else { "" },
        magnitude % 100
    )
}

/// Books a small mall day through gRPC with the acceptance clock following the day's own
/// hours, so entries spread over the period's hours as they would.
async fn book_a_mall_day(server: &TestServer, period: &Period) -> Day {
    // The mall closes at 22:00, 18 hours after the period's start at the default 04:00
    // cut-off; the parking's follow-ups come half an hour later, all inside the period.
    let day_end_ms = period.start_ms + 18 * HOUR_MS;
    server.clock.set(day_end_ms - 13 * HOUR_MS);
    let day = generate(&MallDayProfile::scaled(0.02), 7, day_end_ms);
    register(server.channel.clone(), ADMIN_TOKEN, &day)
        .await
        .expect("register the day's merchants");
    let bar = indicatif::ProgressBar::hidden();
    drive(
        server.channel.clone(),
        day.carry_in.clone(),
        2,
        200,
        ClientMix::All(coalition::demo::Mode::Batch),
        &bar,
    )
    .await
    .unwrap();
    // The day's traffic an hour at a time, the clock just after each hour's last submission.
    let occurred = |envelope: &pb::Envelope| {
        pb::TransactionBody::decode(envelope.body.as_slice())
            .map(|body| body.occurred_at_unix_ms)
            .unwrap_or(0)
    };
    let mut start = 0;
    while start < day.traffic.len() {
        let hour_end = occurred(&day.traffic[start]) / HOUR_MS * HOUR_MS + HOUR_MS;
        let end = day.traffic[start..]
            .iter()
            .position(|envelope| occurred(envelope) >= hour_end)
            .map_or(day.traffic.len(), |offset| start + offset);
        let latest = day.traffic[start..end]
            .iter()
            .map(occurred)
            .max()
            .unwrap_or(hour_end);
        server.clock.set(server.now_ms().max(latest + 1_000));
        drive(
            server.channel.clone(),
            day.traffic[start..end].to_vec(),
            2,
            200,
            ClientMix::All(coalition::demo::Mode::Batch),
            &bar,
        )
        .await
        .unwrap();
        start = end;
    }
    server.clock.set(day_end_ms + HOUR_MS / 2);
    drive(
        server.channel.clone(),
        day.follow_ups.clone(),
        2,
        200,
        ClientMix::All(coalition::demo::Mode::Batch),
        &bar,
    )
    .await
    .unwrap();
    day
}

async fn the_finance_team_settles_a_day_in_the_browser(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let mut config = test_config(&database.url);
    config.console_address = "127.0.0.1:0".into();
    let files = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("console-files-{backend:?}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&files);
    let operator_key = coalition::operator_key::generate(&files.join("operator-keys")).unwrap();
    config.console_operator_keys_dir = files.join("operator-keys").display().to_string();
    config.console_exports_dir = files.join("exports").display().to_string();
    let server = TestServer::start_on(database, config).await;
    let base = format!(
        "http://{}",
        server.server.console_address.expect("the console listens")
    );
    let cutoff = server.config.engine().settlement_cutoff;
    let period = cutoff.next(&cutoff.period_at(server.now_ms()));
    let day = book_a_mall_day(&server, &period).await;

    let chromedriver = Chromedriver::start().await;
    let browser = chromedriver.browser().await;

    // Nothing without a session: any page sends the browser to the sign-in form.
    browser.goto(&format!("{base}/settlement")).await.unwrap();
    assert!(
        browser.current_url().await.unwrap().path() == "/sign-in",
        "a page without a session goes to the sign-in form"
    );
    // A wrong token is refused and opens nothing.
    sign_in(&browser, &base, "not-the-admin-token-at-all").await;
    assert_eq!(browser.current_url().await.unwrap().path(), "/sign-in");
    expect_text(
        &browser,
        "#notice",
        "That is not the admin token. Nothing was opened.",
    )
    .await;
    browser.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/sign-in");
    screenshot(&browser, backend, "sign-in").await;

    // Signed in, the overview shows the open period with the ledger's figures.
    sign_in(&browser, &base, ADMIN_TOKEN).await;
    wait_for_path(&browser, "/").await;
    expect_text(&browser, "#period", &period.label).await;
    let settlement = server.preview(&period.label).await;
    let issuance: i64 = settlement
        .merchants
        .iter()
        .map(|net| -net.issuance_minor)
        .sum();
    assert!(issuance > 0, "the day issued points");
    expect_text(&browser, "#total-issuance", &yuan(issuance)).await;
    let to_pay: i64 = settlement
        .merchants
        .iter()
        .map(|net| net.net_minor)
        .filter(|net| *net > 0)
        .sum();
    expect_text(&browser, "#total-to-pay", &yuan(to_pay)).await;
    expect_text(
        &browser,
        "#entries",
        &(settlement.last_sequence - settlement.first_sequence + 1).to_string(),
    )
    .await;
    // Outstanding points are the members' wallets and holds, summed here the long way.
    let in_wallets = sum_of_member_points(&server).await;
    assert_eq!(
        text_of(&browser, "#outstanding-points")
            .await
            .replace(',', ""),
        in_wallets.to_string()
    );
    // The chart has a bar per hour of the period, most of the day's hours with entries.
    let bars = browser
        .find_all(Locator::Css("#hourly-chart g"))
        .await
        .unwrap();
    assert_eq!(bars.len(), 24);
    screenshot(&browser, backend, "overview").await;

    // The language switch: Chinese, remembered across pages, then back.
    click(&browser, "#language-switch").await;
    expect_text(&browser, "header nav a.active", "概览").await;
    expect_text(&browser, "#total-issuance", &yuan(issuance)).await;
    screenshot(&browser, backend, "overview-zh").await;
    browser.goto(&format!("{base}/settlement")).await.unwrap();
    expect_text(&browser, "header nav a.active", "结算").await;
    click(&browser, "#language-switch").await;
    expect_text(&browser, "header nav a.active", "Settlement").await;

    // The day is over: its period is closed and can be finalised.
    server.clock.set(period.end_ms + HOUR_MS);
    let settlement_url = format!("{base}/settlement?period={}", percent_encode(&period.label));
    browser.goto(&settlement_url).await.unwrap();
    expect_text(&browser, "#status", "closed, not finalised").await;
    click(&browser, "#finalise").await;
    wait_for_path(&browser, "/settlement/finalise").await;
    expect_text(&browser, "#total-issuance", &yuan(issuance)).await;
    screenshot(&browser, backend, "finalise-confirmation").await;
    // A form whose CSRF token was taken out is refused, and nothing is finalised.
    browser
        .execute(
            "document.querySelector('#confirm-finalise').form.elements['csrf'].remove(); \
             document.querySelector('#confirm-finalise').click();",
            vec![],
        )
        .await
        .unwrap();
    browser
        .wait()
        .for_element(Locator::Id("message"))
        .await
        .unwrap();
    assert_eq!(
        text_of(&browser, "#message").await,
        "This form is no longer valid (its security token is missing or wrong). Nothing was \
         changed; reload the page and try again."
    );
    let unchanged = server.preview(&period.label).await;
    assert_eq!(
        unchanged.status,
        pb::SettlementStatus::Closed as i32,
        "a forged form finalises nothing"
    );
    // The real confirmation finalises it.
    browser
        .goto(&format!(
            "{base}/settlement/finalise?period={}",
            period.label
        ))
        .await
        .unwrap();
    click(&browser, "#confirm-finalise").await;
    expect_text(
        &browser,
        "#notice",
        "The period is finalised: its closing entry is booked.",
    )
    .await;
    expect_text(&browser, "#status", "finalised").await;
    let finalised = server.preview(&period.label).await;
    assert_eq!(finalised.status, pb::SettlementStatus::Finalised as i32);

    // Each merchant's net on the page is the ledger's.
    for net in &finalised.merchants {
        let row = format!("#nets tr[data-merchant='{}'] td.net", net.merchant_id);
        expect_text(&browser, &row, &yuan(net.net_minor)).await;
    }
    // The matrix shows every cell's value once: its cells add up to the whole matrix.
    let matrix_total: i64 = finalised.matrix.iter().map(|cell| cell.value_minor).sum();
    assert!(
        matrix_total > 0,
        "points of one merchant were redeemed at another"
    );
    let cells = browser
        .find_all(Locator::Css("#matrix tbody td"))
        .await
        .unwrap();
    let mut shown_total = 0i64;
    for cell in cells {
        let text = cell.text().await.unwrap();
        if !text.is_empty() {
            shown_total += text.replace(['¥', ',', '.'], "").parse::<i64>().unwrap();
        }
    }
    assert_eq!(shown_total, matrix_total);
    screenshot(&browser, backend, "settlement").await;
    browser
        .execute(
            "document.querySelector('#matrix').scrollIntoView();",
            vec![],
        )
        .await
        .unwrap();
    screenshot(&browser, backend, "settlement-matrix").await;

    // A merchant's statement lines (amounts and fees) sum to its net less its breakage share.
    let cinema = finalised
        .merchants
        .iter()
        .find(|net| net.merchant_id.starts_with("cinema"))
        .expect("the day has a cinema");
    browser
        .goto(&format!(
            "{base}/settlement/statement?period={}&merchant={}",
            period.label, cinema.merchant_id
        ))
        .await
        .unwrap();
    expect_text(
        &browser,
        "#statement-lines-net",
        &yuan(cinema.net_minor - cinema.breakage_share_minor),
    )
    .await;
    screenshot(&browser, backend, "statement").await;

    // The payments: the file and the bank file are the export's, and a payout is booked.
    browser.goto(&settlement_url).await.unwrap();
    let payments_link = browser
        .find(Locator::Id("payments-csv"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .expect("a link to the payments file");
    let payments_csv = fetch_in_browser(&browser, &payments_link).await;
    assert!(
        payments_csv.starts_with("merchant_id,merchant_name,direction,amount_minor"),
        "{payments_csv}"
    );
    let paid_merchant = payments_csv
        .lines()
        .skip(1)
        .find(|line| line.contains(",operator_pays,"))
        .and_then(|line| line.split(',').next())
        .expect("the operator pays someone")
        .to_owned();
    let pain = fetch_in_browser(
        &browser,
        &format!("/settlement/payments.pain.001.xml?period={}", period.label),
    )
    .await;
    assert!(pain.contains("pain.001.001.09"), "{pain}");
    assert!(pain.contains(&paid_merchant));
    let payout_row = format!("#payments tr[data-merchant='{paid_merchant}']");
    browser
        .find(Locator::Css(&format!("{payout_row} input[name=reference]")))
        .await
        .unwrap()
        .send_keys("BANK-REF-0001")
        .await
        .unwrap();
    click(&browser, &format!("{payout_row} button")).await;
    let notice = text_of(&browser, "#notice").await;
    assert!(
        notice.starts_with(&format!(
            "Payout recorded. {paid_merchant}: still payable ¥0.00"
        )),
        "{notice}"
    );
    assert_eq!(
        server
            .account_balance(pb::AccountKind::MerchantPayable, &paid_merchant, "CNY")
            .await,
        0,
        "the payout cleared what was payable"
    );

    // Reconciliation: a tenant's own record with one difference of each kind planted.
    let storage = server.server.engine.storage();
    let mut best: Option<(String, Vec<coalition_storage::ClearedTransaction>)> = None;
    for merchant in &day.merchants {
        let id = coalition_domain::MerchantId::new(merchant.signer.merchant_id.clone()).unwrap();
        let cleared: Vec<_> = storage
            .merchant_transactions(&id, period.start_ms, period.end_ms)
            .await
            .unwrap()
            .into_iter()
            .filter(|transaction| transaction.kind == "earn" && transaction.spend_minor.is_some())
            .collect();
        if best
            .as_ref()
            .is_none_or(|(_, most)| cleared.len() > most.len())
        {
            best = Some((merchant.signer.merchant_id.clone(), cleared));
        }
    }
    let (record_merchant, cleared) = best.unwrap();
    assert!(
        cleared.len() >= 5,
        "{record_merchant} has {} earns",
        cleared.len()
    );
    let mut record = String::from("merchant_transaction_id,kind,points,amount_minor\n");
    for (index, transaction) in cleared.iter().enumerate() {
        let spend = transaction.spend_minor.unwrap();
        let line = match index {
            0 => format!(
                "{},earn,{},{spend}\n",
                transaction.merchant_transaction_id,
                transaction.points + 1
            ),
            1 => format!(
                "{},earn,{},{}\n",
                transaction.merchant_transaction_id,
                transaction.points,
                spend + 100
            ),
            2 => continue,
            3 => format!(
                "{0},earn,{1},{spend}\n{0},earn,{1},{spend}\n",
                transaction.merchant_transaction_id, transaction.points
            ),
            _ => format!(
                "{},earn,{},{spend}\n",
                transaction.merchant_transaction_id, transaction.points
            ),
        };
        record.push_str(&line);
    }
    record.push_str("ghost-transaction-1,earn,50,5000\nmalformed-row,earn,not-a-number,1\n");
    let record_path = files.join("record.csv");
    std::fs::write(&record_path, &record).unwrap();
    browser
        .goto(&format!("{base}/reconciliation"))
        .await
        .unwrap();
    browser
        .find(Locator::Css(&format!(
            "#merchant-select option[value='{record_merchant}']"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let period_field = browser.find(Locator::Id("period-input")).await.unwrap();
    period_field.clear().await.unwrap();
    period_field.send_keys(&period.label).await.unwrap();
    browser
        .find(Locator::Id("file-input"))
        .await
        .unwrap()
        .send_keys(&record_path.display().to_string())
        .await
        .unwrap();
    screenshot(&browser, backend, "reconciliation-upload").await;
    click(&browser, "#reconcile").await;
    wait_for_path(&browser, "/reconciliation/result").await;
    // Whatever else the merchant booked in the period (refunds, say) is missing from its
    // record too.
    let all_booked = storage
        .merchant_transactions(
            &coalition_domain::MerchantId::new(record_merchant.clone()).unwrap(),
            period.start_ms,
            period.end_ms,
        )
        .await
        .unwrap()
        .len();
    let missing_at_merchant = 1 + all_booked - cleared.len();
    for (status, count) in [
        ("matched", cleared.len() - 3),
        ("points_mismatch", 1),
        ("amount_mismatch", 1),
        ("missing_at_merchant", missing_at_merchant),
        ("duplicated", 1),
        ("missing_in_clearing", 1),
    ] {
        expect_text(
            &browser,
            &format!(".count[data-status='{status}'] strong"),
            &count.to_string(),
        )
        .await;
    }
    expect_text(&browser, "#malformed-rows", "1").await;
    expect_text(
        &browser,
        "#differences-total",
        &(4 + missing_at_merchant).to_string(),
    )
    .await;
    expect_text(&browser, "#clearing-transactions", &all_booked.to_string()).await;
    screenshot(&browser, backend, "reconciliation-result").await;
    click(&browser, ".count[data-status='missing_in_clearing']").await;
    expect_text(&browser, "#differences-total", "1").await;
    expect_text(
        &browser,
        "#differences tbody td:nth-child(2)",
        "ghost-transaction-1",
    )
    .await;

    // Exports: the finalised period's signed folder, made here and downloaded as one archive
    // that verifies with nothing but the operator's public key.
    browser.goto(&format!("{base}/exports")).await.unwrap();
    click(
        &browser,
        &format!("#exports tr[data-period='{}'] button.make", period.label),
    )
    .await;
    expect_text(
        &browser,
        "#notice",
        &format!("Export made for period {}", period.label),
    )
    .await;
    screenshot(&browser, backend, "exports").await;
    let session = browser
        .get_named_cookie("coalition_session")
        .await
        .expect("the session cookie")
        .value()
        .to_owned();
    let (status, headers, archive) = http_get(
        &base,
        &format!("/exports/download?period={}", period.label),
        Some(&session),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-tar");
    let unpacked = files.join("unpacked");
    tar::Archive::new(archive.as_slice())
        .unpack(&unpacked)
        .unwrap();
    coalition::verify::verify_folder(
        &unpacked.join(format!("export-{}", period.label)),
        &[operator_key.public_key],
    )
    .expect("the downloaded export verifies");
    // The console's statement download is the export's statement, byte for byte.
    let (status, _, statement) = http_get(
        &base,
        &format!(
            "/settlement/statement.csv?period={}&merchant={}",
            period.label, cinema.merchant_id
        ),
        Some(&session),
    )
    .await;
    assert_eq!(status, 200);
    let exported = std::fs::read(
        unpacked
            .join(format!("export-{}", period.label))
            .join(format!("statements/{}.csv", cinema.merchant_id)),
    )
    .unwrap();
    assert!(statement.len() > 100, "the cinema's statement has lines");
    assert_eq!(
        String::from_utf8_lossy(&statement),
        String::from_utf8_lossy(&exported)
    );
    // Without the session the same download is refused (sent to sign in), and a form posted
    // without a session or its CSRF token changes nothing.
    let (status, headers, _) = http_get(
        &base,
        &format!("/exports/download?period={}", period.label),
        None,
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/sign-in");
    let (status, _, body) = http_post(
        &base,
        "/settlement/payout",
        &session,
        &format!(
            "period={}&merchant={paid_merchant}&amount_minor=1&reference=forged",
            period.label
        ),
    )
    .await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));

    // Merchants: every partner listed; a key revoked behind its confirmation is refused from
    // then on; a merchant suspended and reactivated, each behind a confirmation.
    browser.goto(&format!("{base}/merchants")).await.unwrap();
    let rows = browser
        .find_all(Locator::Css("#merchants tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), day.merchants.len());
    screenshot(&browser, backend, "merchants").await;
    let tenant = day
        .merchants
        .iter()
        .find(|merchant| merchant.category == pb::MerchantCategory::MallTenant)
        .expect("the day has tenants");
    let member = day.members[0].clone();
    let tenant_id = &tenant.signer.merchant_id;
    click(
        &browser,
        &format!("#merchants tr[data-merchant='{tenant_id}'] a"),
    )
    .await;
    expect_text(&browser, "#merchant-status", "active").await;
    let key_row = format!("#keys tr[data-key='{}']", tenant.signer.key_id);
    expect_text(&browser, &format!("{key_row} .key-state"), "in force").await;
    screenshot(&browser, backend, "merchant").await;
    click(&browser, &format!("{key_row} a.revoke")).await;
    expect_text(&browser, "#change-key", &tenant.signer.key_id).await;
    // Until confirmed, the key still signs.
    let before = server
        .earn(&tenant.signer, "console-before-revoke", &member, 10)
        .await;
    accepted(&before);
    click(&browser, "#confirm-change").await;
    expect_text(&browser, "#notice", "Key revoked.").await;
    expect_text(&browser, &format!("{key_row} .key-state"), "revoked").await;
    let after = server
        .earn(&tenant.signer, "console-after-revoke", &member, 10)
        .await;
    assert_eq!(rejection(&after), pb::RejectionReason::KeyRevoked);

    let restaurant = day
        .merchants
        .iter()
        .find(|merchant| merchant.category == pb::MerchantCategory::Restaurant)
        .expect("the day has restaurants");
    browser
        .goto(&format!(
            "{base}/merchants/detail?merchant={}",
            restaurant.signer.merchant_id
        ))
        .await
        .unwrap();
    click(&browser, "#suspend").await;
    click(&browser, "#confirm-change").await;
    expect_text(&browser, "#notice", "Merchant suspended.").await;
    expect_text(&browser, "#merchant-status", "suspended").await;
    let suspended = server
        .earn(&restaurant.signer, "console-while-suspended", &member, 10)
        .await;
    assert_eq!(
        rejection(&suspended),
        pb::RejectionReason::MerchantSuspended
    );
    click(&browser, "#reactivate").await;
    click(&browser, "#confirm-change").await;
    expect_text(&browser, "#notice", "Merchant reactivated.").await;
    let reactivated = server
        .earn(
            &restaurant.signer,
            "console-after-reactivation",
            &member,
            10,
        )
        .await;
    accepted(&reactivated);

    // Members: the balance the ledger holds, its lots with their issuers, the history.
    browser
        .goto(&format!("{base}/members?member={member}"))
        .await
        .unwrap();
    let wallet = server.balance(&member).await;
    assert_eq!(
        text_of(&browser, "#member-wallet").await.replace(',', ""),
        wallet.to_string()
    );
    let lots = browser
        .find_all(Locator::Css("#lots tbody tr td:nth-child(2)"))
        .await
        .unwrap();
    let mut lot_points = 0i64;
    for lot in lots {
        lot_points += lot
            .text()
            .await
            .unwrap()
            .replace(',', "")
            .parse::<i64>()
            .unwrap();
    }
    assert_eq!(lot_points, wallet, "a wallet without debt is its lots");
    let history = browser
        .find_all(Locator::Css("#history tbody tr"))
        .await
        .unwrap();
    assert!(
        history.len() >= 3,
        "carry-in and the two earns of this test"
    );
    screenshot(&browser, backend, "member").await;
    browser
        .goto(&format!("{base}/members?member=nobody-at-all"))
        .await
        .unwrap();
    expect_text(
        &browser,
        "#member-unknown",
        "No member is enrolled under this id.",
    )
    .await;

    // Sign-out ends the session: the next page asks to sign in again.
    click(&browser, "#sign-out").await;
    wait_for_path(&browser, "/sign-in").await;
    browser.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/sign-in");

    browser.close().await.unwrap();
    server.server.shutdown().await.unwrap();
}

/// The text of a same-origin GET made by the page (with the session's cookie).
async fn fetch_in_browser(browser: &Client, path: &str) -> String {
    browser
        .execute_async(
            "const [path, done] = arguments; \
             fetch(path).then(r => r.text()).then(done, e => done('failed: ' + e));",
            vec![serde_json::Value::String(path.to_owned())],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Every member's points in wallets and holds, summed from the balances.
async fn sum_of_member_points(server: &TestServer) -> i64 {
    let url = server.database.url.clone();
    let sql = "SELECT CAST(COALESCE(SUM(b.balance), 0) AS BIGINT) FROM account_balances b \
               JOIN accounts a ON a.account_id = b.account_id \
               WHERE a.kind IN ('member_wallet', 'member_held') AND b.asset = 'PTS'";
    if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let sum: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        sum
    } else {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let sum: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
        pool.close().await;
        sum
    }
}

on_both_backends!(the_finance_team_settles_a_day_in_the_browser);
