-- Points that repaid a member's debt as they came into the wallet (new points, or the
-- released rest of a hold), apart from the points entries took out of lots. A partial
-- capture may take from a lot and repay debt from the same lot in one entry, which one
-- table keyed by (entry, lot) cannot hold; and lot attribution (whose points a redemption
-- took) reads only lot_consumptions. A lot's remaining points are its points less both.

CREATE TABLE debt_repayments (
    entry_sequence INTEGER NOT NULL REFERENCES entries (sequence),
    lot_entry_sequence INTEGER NOT NULL,
    lot_index INTEGER NOT NULL,
    points INTEGER NOT NULL,
    PRIMARY KEY (entry_sequence, lot_entry_sequence, lot_index)
);
