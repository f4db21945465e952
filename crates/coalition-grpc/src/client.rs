//! What a partner's integration does, in Rust: build a body, sign exactly its bytes, and send
//! the envelope. Used by the demo, the benchmark, the CLI and the tests; partners in other
//! languages follow the same steps (see the README's worked example).

use coalition_domain::signing::{self, QUERY_DOMAIN, SUBMISSION_DOMAIN};
use ed25519_dalek::SigningKey;
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::pb;

pub use crate::pb::admin_service_client::AdminServiceClient;
pub use crate::pb::query_service_client::QueryServiceClient;
pub use crate::pb::submission_service_client::SubmissionServiceClient;

/// A merchant's signing identity.
#[derive(Clone)]
pub struct MerchantSigner {
    pub merchant_id: String,
    pub key_id: String,
    pub key: SigningKey,
}

impl MerchantSigner {
    pub fn new(merchant_id: impl Into<String>, key_id: impl Into<String>, key: SigningKey) -> Self {
        Self {
            merchant_id: merchant_id.into(),
            key_id: key_id.into(),
            key,
        }
    }

    /// Signs already encoded body bytes.
    pub fn envelope_for_bytes(&self, body: Vec<u8>) -> pb::Envelope {
        let signature = signing::sign(&self.key, SUBMISSION_DOMAIN, &body).to_vec();
        pb::Envelope {
            merchant_id: self.merchant_id.clone(),
            key_id: self.key_id.clone(),
            body,
            signature,
        }
    }

    /// Encodes and signs a transaction body.
    pub fn envelope(&self, body: &pb::TransactionBody) -> pb::Envelope {
        self.envelope_for_bytes(body.encode_to_vec())
    }

    /// Encodes and signs a query, returning the query bytes and the signature to send.
    pub fn sign_query(&self, query: &impl Message) -> (Vec<u8>, pb::QuerySignature) {
        let bytes = query.encode_to_vec();
        let signature = signing::sign(&self.key, QUERY_DOMAIN, &bytes).to_vec();
        (
            bytes,
            pb::QuerySignature {
                merchant_id: self.merchant_id.clone(),
                key_id: self.key_id.clone(),
                signature,
            },
        )
    }
}

/// Adds the admin token to every call.
#[derive(Clone)]
pub struct AdminToken(MetadataValue<tonic::metadata::Ascii>);

impl AdminToken {
    pub fn new(token: &str) -> Result<Self, Status> {
        format!("Bearer {token}")
            .parse()
            .map(AdminToken)
            .map_err(|_| Status::invalid_argument("the admin token must be printable ASCII"))
    }
}

impl Interceptor for AdminToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}
