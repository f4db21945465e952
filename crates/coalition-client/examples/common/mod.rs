//! What both examples read from their command line: the server, the merchant and its key.

use coalition_client::{Client, Signer};

/// `ADDRESS MERCHANT KEY_ID KEY_FILE MEMBER`, where KEY_FILE holds the hex seed that
/// `coalition keygen` writes. Returns the client (store `store-1`, terminal `pos-1`) and the
/// member.
pub fn client_from_args() -> anyhow::Result<(Client, String)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, merchant, key_id, key_file, member] = args.as_slice() else {
        anyhow::bail!("usage: ADDRESS MERCHANT KEY_ID KEY_FILE MEMBER");
    };
    let seed: [u8; 32] = hex::decode(std::fs::read_to_string(key_file)?.trim())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{key_file} must hold 32 bytes of hex"))?;
    let client = Client::builder(address.clone(), Signer::from_seed(merchant, key_id, &seed))
        .location("store-1", "pos-1")
        .build()?;
    Ok((client, member.clone()))
}
