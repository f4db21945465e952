//! The one maker of a period's signed files, page by page: the export runs it onto the
//! disk, `verify` into digests.

use super::*;

/// What an export holds beside what every export holds (the compressed JSON lines, the
/// settlement, the payments and their inputs): the spreadsheet copies and the accounting
/// journal, on request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats {
    /// CSV copies: `entries.csv`, `postings.csv`, `attributions.csv`, `trial_balance.csv`,
    /// `settlement.csv`, `matrix.csv`, `statements/M.csv`.
    pub csv: bool,
    /// The plain-text accounting journal `journal.hledger`.
    pub hledger: bool,
}

impl Formats {
    pub const ALL: Formats = Formats {
        csv: true,
        hledger: true,
    };

    /// The names the manifest lists them by.
    pub fn names(self) -> Vec<String> {
        let mut names = Vec::new();
        if self.csv {
            names.push("csv".to_owned());
        }
        if self.hledger {
            names.push("hledger".to_owned());
        }
        names
    }

    /// From the manifest's names; an unknown name is an error.
    pub fn from_names(names: &[String]) -> anyhow::Result<Formats> {
        let mut formats = Formats::default();
        for name in names {
            match name.as_str() {
                "csv" => formats.csv = true,
                "hledger" => formats.hledger = true,
                other => bail!("format {other:?} is not one this version knows"),
            }
        }
        Ok(formats)
    }
}

/// What a period's files are made from besides its entries and attributions: the export
/// reads them from the database, `verify` from the export's own files.
pub(crate) struct PeriodInputs {
    pub record: SettlementRecord,
    pub cutoff: Cutoff,
    /// Every account's balance before the period's first entry.
    pub opening: BTreeMap<BalanceKey, i64>,
    /// The sequence the period's first entry must have.
    pub first_sequence: u64,
    pub merchants: Vec<MerchantName>,
    pub payables: Vec<Payable>,
    /// Merchants' terms by version (every version the database has, or the export's own).
    pub terms: TermsBook,
    /// Merchants' keys (every key the registry has, or the export's own).
    pub keys: Vec<KeyRecord>,
    /// The earn rules by version (every version, or the export's own).
    pub earn_rules: Vec<EarnRulesRecord>,
    /// The tiers of (at least) the members of the period's earns priced by the earn rules.
    pub member_tiers: BTreeMap<String, Option<String>>,
    pub formats: Formats,
}

/// Makes every signed file of a period, page by page as the entries come, so its memory is
/// bounded by a page and the number of merchants and accounts, never by the period's length.
/// The export runs it onto the disk; `verify` runs it again from the export's inputs into
/// digests, so every file that follows from others is checked byte for byte.
pub(crate) struct PeriodWriter<'a> {
    folder: Folder,
    inputs: &'a PeriodInputs,
    currency: CurrencyCode,
    entries_jsonl: Streamed,
    attributions_jsonl: Streamed,
    envelopes_jsonl: Streamed,
    /// The (merchant, key) of every envelope written.
    keys_used: std::collections::BTreeSet<(String, String)>,
    entries_csv: Option<Streamed>,
    postings_csv: Option<Streamed>,
    attributions_csv: Option<Streamed>,
    journal: Option<Streamed>,
    /// Per merchant: its JSON lines statement, and its CSV one when CSV is asked for.
    statements: Vec<(MerchantId, String, Option<String>)>,
    balance: TrialBalance,
    tree: merkle::RootBuilder,
    /// The terms versions the period's priced entries record.
    terms_used: std::collections::BTreeSet<(String, u32)>,
    /// The earn rules versions the period's earns record, and their members.
    rules_used: std::collections::BTreeSet<u32>,
    rule_members: std::collections::BTreeSet<String>,
    /// Per merchant, the entries that concern it (`proof::merchants_concerned`).
    merchant_entries: BTreeMap<String, u64>,
    pub entry_count: u64,
}

/// What a `PeriodWriter` made.
pub(crate) struct Written {
    pub folder: Folder,
    pub entry_count: u64,
    pub entries_root: String,
    pub omitted: Vec<OmittedFile>,
    pub merchant_entries: BTreeMap<String, u64>,
}

impl<'a> PeriodWriter<'a> {
    pub fn begin(mut folder: Folder, inputs: &'a PeriodInputs) -> anyhow::Result<Self> {
        let settlement = &inputs.record.settlement;
        let currency = CurrencyCode::new(&settlement.currency)
            .with_context(|| format!("currency {:?}", settlement.currency))?;
        let formats = inputs.formats;
        let entries_jsonl = folder.create(ENTRIES_FILE, None)?;
        let attributions_jsonl = folder.create(ATTRIBUTIONS_FILE, None)?;
        let envelopes_jsonl = folder.create(ENVELOPES_FILE, None)?;
        let (entries_csv, postings_csv, attributions_csv) = if formats.csv {
            (
                Some(folder.create("entries.csv", Some(&ENTRY_COLUMNS))?),
                Some(folder.create(
                    "postings.csv",
                    Some(&["entry_sequence", "account_kind", "owner", "asset", "amount"]),
                )?),
                Some(folder.create(
                    "attributions.csv",
                    Some(&["entry_sequence", "issuer", "points"]),
                )?),
            )
        } else {
            (None, None, None)
        };
        let journal = if formats.hledger {
            let mut journal = folder.create(JOURNAL_FILE, None)?;
            journal
                .write(hledger_opening(settlement, &inputs.cutoff, &inputs.opening).as_bytes())?;
            Some(journal)
        } else {
            None
        };
        // A statement per merchant, every one created now (a merchant may have no line) and
        // added to as the pages come.
        let mut statements = Vec::with_capacity(settlement.merchants.len());
        for net in &settlement.merchants {
            let merchant = MerchantId::new(net.merchant_id.clone())
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            let jsonl = statement_jsonl(&merchant);
            folder.create(&jsonl, None)?.finish()?;
            let csv = if formats.csv {
                let csv = format!("statements/{}.csv", merchant.file_name_stem());
                folder.create(&csv, Some(&STATEMENT_COLUMNS))?.finish()?;
                Some(csv)
            } else {
                None
            };
            statements.push((merchant, jsonl, csv));
        }
        Ok(PeriodWriter {
            folder,
            inputs,
            currency,
            entries_jsonl,
            attributions_jsonl,
            envelopes_jsonl,
            keys_used: std::collections::BTreeSet::new(),
            entries_csv,
            postings_csv,
            attributions_csv,
            journal,
            statements,
            balance: TrialBalance::new(&inputs.opening),
            tree: merkle::RootBuilder::new(),
            terms_used: std::collections::BTreeSet::new(),
            rules_used: std::collections::BTreeSet::new(),
            rule_members: std::collections::BTreeSet::new(),
            merchant_entries: BTreeMap::new(),
            entry_count: 0,
        })
    }

    /// The next entries of the period, in sequence order, and the lot attribution of their
    /// redemptions.
    pub fn add_page(
        &mut self,
        page: &[Entry],
        attributions: &[settlement::Attribution],
        envelopes: &[EnvelopeRecord],
    ) -> anyhow::Result<()> {
        for envelope in envelopes {
            let merchant = page
                .first()
                .and_then(|first| envelope.entry_sequence.checked_sub(first.sequence))
                .and_then(|index| page.get(index as usize))
                .filter(|entry| entry.sequence == envelope.entry_sequence)
                .and_then(|entry| entry.origin.as_ref())
                .with_context(|| {
                    format!(
                        "an envelope names entry {}, which is no merchant's entry of this page",
                        envelope.entry_sequence
                    )
                })?;
            self.keys_used.insert((
                merchant.merchant_id.as_str().to_owned(),
                envelope.key_id.clone(),
            ));
            self.envelopes_jsonl.jsonl(envelope)?;
        }
        let cutoff = &self.inputs.cutoff;
        for entry in page {
            if entry.sequence != self.inputs.first_sequence + self.entry_count {
                bail!(
                    "entry {} is not where period {} continues",
                    entry.sequence,
                    self.inputs.record.settlement.period
                );
            }
            self.entry_count += 1;
            self.tree.push(&entry.hash);
            if let (Some(version), Some(member)) = (entry.earn_rule_version, &entry.member_id) {
                self.rules_used.insert(version);
                self.rule_members.insert(member.as_str().to_owned());
            }
            if priced_side(entry.kind).is_some()
                && let (Some(origin), Some(version)) = (&entry.origin, entry.terms_version)
            {
                self.terms_used
                    .insert((origin.merchant_id.as_str().to_owned(), version));
            }
            let record = EntryRecord::from_entry(entry);
            for merchant in crate::proof::merchants_concerned(&record) {
                *self
                    .merchant_entries
                    .entry(merchant.to_owned())
                    .or_default() += 1;
            }
            self.entries_jsonl.jsonl(&record)?;
            if let Some(entries_csv) = &mut self.entries_csv {
                entries_csv.csv(entry_cells(&record, cutoff))?;
            }
            if let Some(postings_csv) = &mut self.postings_csv {
                for posting in &record.postings {
                    postings_csv.csv(vec![
                        Cell::Number(posting.entry_sequence as i64),
                        text(&posting.account_kind),
                        text(&posting.owner),
                        text(&posting.asset),
                        Cell::Number(posting.amount),
                    ])?;
                }
            }
        }
        for attribution in attributions {
            self.attributions_jsonl.jsonl(attribution)?;
            if let Some(attributions_csv) = &mut self.attributions_csv {
                attributions_csv.csv(vec![
                    Cell::Number(attribution.entry_sequence as i64),
                    text(&attribution.issuer),
                    Cell::Number(attribution.points),
                ])?;
            }
        }
        self.balance.add(page)?;
        if let Some(journal) = &mut self.journal {
            journal.write(hledger_entries(cutoff, page).as_bytes())?;
        }
        for (merchant, jsonl, csv) in &self.statements {
            let lines = settlement::statement_lines(page, merchant, self.currency);
            if lines.is_empty() {
                continue;
            }
            let mut jsonl = self.folder.append(jsonl)?;
            for line in &lines {
                jsonl.jsonl(line)?;
            }
            jsonl.finish()?;
            if let Some(csv) = csv {
                let mut csv = self.folder.append(csv)?;
                for line in &lines {
                    csv.csv(statement_cells(line, cutoff))?;
                }
                csv.finish()?;
            }
        }
        Ok(())
    }

    /// The files made from the whole period: trial balance, the journal's closing,
    /// settlement, matrix, the inputs of the payments and the payments.
    pub fn finish(self) -> anyhow::Result<Written> {
        let PeriodWriter {
            mut folder,
            inputs,
            entries_jsonl,
            attributions_jsonl,
            envelopes_jsonl,
            keys_used,
            entries_csv,
            postings_csv,
            attributions_csv,
            journal,
            balance,
            tree,
            terms_used,
            rules_used,
            rule_members,
            merchant_entries,
            entry_count,
            ..
        } = self;
        for streamed in [entries_jsonl, attributions_jsonl, envelopes_jsonl]
            .into_iter()
            .chain(entries_csv)
            .chain(postings_csv)
            .chain(attributions_csv)
        {
            streamed.finish()?;
        }
        let settlement = &inputs.record.settlement;
        let cutoff = &inputs.cutoff;
        // The trial balance, and the journal's closing assertions from it.
        let balance = balance.finish()?;
        for (asset, (opening_sum, closing_sum)) in trial_balance_sums(&balance) {
            if opening_sum != 0 || closing_sum != 0 {
                bail!(
                    "the trial balance of {asset} does not sum to zero: opening {opening_sum}, closing {closing_sum}"
                );
            }
        }
        if let Some(mut journal) = journal {
            journal.write(hledger_closing(settlement, cutoff, &balance).as_bytes())?;
            journal.finish()?;
        }
        folder.jsonl(TRIAL_BALANCE_FILE, &balance)?;
        if inputs.formats.csv {
            folder.csv(
                "trial_balance.csv",
                &[
                    "account_kind",
                    "owner",
                    "asset",
                    "opening",
                    "debits",
                    "credits",
                    "closing",
                ],
                &balance,
                |line| {
                    vec![
                        text(&line.account_kind),
                        text(&line.owner),
                        text(&line.asset),
                        Cell::Number(line.opening),
                        Cell::Number(line.debits),
                        Cell::Number(line.credits),
                        Cell::Number(line.closing),
                    ]
                },
            )?;
        }
        write_settlement(&mut folder, &inputs.record, inputs.formats)?;

        // What the payments are made from, then the payments for the treasury: what is
        // payable after this period's closing entry, netted over every finalised period, so
        // that no file pays a merchant what it does not owe it and each transfer is what
        // RecordPayout accepts.
        folder.jsonl(
            TERMS_FILE,
            inputs.terms.needed(&terms_used, &inputs.record.settlement),
        )?;
        let mut keys: Vec<&KeyRecord> = inputs
            .keys
            .iter()
            .filter(|key| keys_used.contains(&(key.merchant_id.clone(), key.key_id.clone())))
            .collect();
        keys.sort_by(|left, right| {
            (&left.merchant_id, &left.key_id).cmp(&(&right.merchant_id, &right.key_id))
        });
        keys.dedup();
        folder.jsonl(KEYS_FILE, keys)?;
        let mut rules: Vec<&EarnRulesRecord> = inputs
            .earn_rules
            .iter()
            .filter(|rules| rules_used.contains(&rules.version))
            .collect();
        rules.sort_by_key(|rules| rules.version);
        folder.jsonl(EARN_RULES_FILE, rules)?;
        folder.jsonl(
            MEMBER_TIERS_FILE,
            rule_members.iter().map(|member| MemberTier {
                member_id: member.clone(),
                tier: inputs.member_tiers.get(member).cloned().flatten(),
            }),
        )?;
        folder.jsonl(MERCHANTS_FILE, &inputs.merchants)?;
        folder.jsonl(PAYABLES_FILE, &inputs.payables)?;
        let payables: BTreeMap<String, i64> = inputs
            .payables
            .iter()
            .map(|payable| (payable.merchant_id.clone(), payable.payable_minor))
            .collect();
        let payments = settlement::payments(settlement, &payables);
        let names: BTreeMap<&str, &str> = inputs
            .merchants
            .iter()
            .map(|merchant| (merchant.merchant_id.as_str(), merchant.name.as_str()))
            .collect();
        let name_of = |merchant: &str| {
            names
                .get(merchant)
                .map_or_else(|| merchant.to_owned(), |name| (*name).to_owned())
        };
        folder.write(
            "payments.csv",
            &payments_csv(settlement, &payments, &name_of)?,
        )?;
        // pain.001 has no valid form without a transfer: when the operator pays nobody, the
        // file is left out and the manifest says why.
        let mut omitted = Vec::new();
        match pain_001(
            settlement,
            &payments,
            cutoff,
            inputs.record.finalised_at_ms,
            &name_of,
        ) {
            Some(pain) => folder.write(PAIN_001_FILE, pain.as_bytes())?,
            None => omitted.push(OmittedFile {
                path: PAIN_001_FILE.to_owned(),
                reason: "the operator pays no merchant after this period's closing".to_owned(),
            }),
        }
        Ok(Written {
            folder,
            entry_count,
            entries_root: hex::encode(tree.root()),
            omitted,
            merchant_entries,
        })
    }
}

/// The settlement in its three forms and its matrix in two (the CSV ones on request).
pub(crate) fn write_settlement(
    folder: &mut Folder,
    record: &SettlementRecord,
    formats: Formats,
) -> anyhow::Result<()> {
    let settlement = &record.settlement;
    folder.write(
        "settlement.json",
        serde_json::to_string_pretty(record)?.as_bytes(),
    )?;
    folder.jsonl("settlement.jsonl", &settlement.merchants)?;
    folder.jsonl("matrix.jsonl", &settlement.matrix)?;
    if !formats.csv {
        return Ok(());
    }
    let operator = &settlement.operator;
    let mut settlement_rows: Vec<Vec<Cell>> = settlement
        .merchants
        .iter()
        .map(|net| {
            vec![
                text(&net.merchant_id),
                Cell::Number(net.points_issued),
                Cell::Number(net.points_redeemed),
                Cell::Number(net.issuance_minor),
                Cell::Number(net.issuance_reversed_minor),
                Cell::Number(net.redemptions_minor),
                Cell::Number(net.redemptions_reversed_minor),
                Cell::Number(net.fees_minor),
                Cell::Number(net.funding_minor),
                Cell::Number(net.breakage_minor),
                text(&net.breakage_share),
                Cell::Number(net.breakage_share_minor),
                Cell::Number(net.net_minor),
            ]
        })
        .collect();
    settlement_rows.push(vec![
        text("operator"),
        Cell::Number(0),
        Cell::Number(0),
        Cell::Number(operator.float_minor),
        Cell::Number(0),
        Cell::Number(operator.rounding_minor),
        Cell::Number(0),
        Cell::Number(operator.fees_minor),
        Cell::Number(operator.cash_minor),
        Cell::Number(operator.breakage_kept_minor),
        text(""),
        Cell::Number(0),
        Cell::Number(operator.net_minor),
    ]);
    folder.csv(
        "settlement.csv",
        &[
            "party",
            "points_issued",
            "points_redeemed",
            "issuance_minor",
            "issuance_reversed_minor",
            "redemptions_minor",
            "redemptions_reversed_minor",
            "fees_minor",
            "funding_minor",
            "breakage_minor",
            "breakage_share",
            "breakage_share_minor",
            "net_minor",
        ],
        settlement_rows,
        |row| row,
    )?;
    folder.csv(
        "matrix.csv",
        &["issuer", "redeemer", "points", "value_minor"],
        &settlement.matrix,
        |cell| {
            vec![
                text(&cell.issuer),
                text(&cell.redeemer),
                Cell::Number(cell.points),
                Cell::Number(cell.value_minor),
            ]
        },
    )
}
