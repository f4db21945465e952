//! The merchant registry: who may submit, with which keys, when. The engine shares one copy
//! with the signature checkers, which run in parallel off the writer.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;

use crate::ids::{KeyId, MerchantId};
use crate::rejection::{Rejection, RejectionReason};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MerchantCategory {
    MallTenant,
    Cinema,
    Restaurant,
    Parking,
    Other,
}

impl MerchantCategory {
    pub fn code(self) -> &'static str {
        match self {
            Self::MallTenant => "mall_tenant",
            Self::Cinema => "cinema",
            Self::Restaurant => "restaurant",
            Self::Parking => "parking",
            Self::Other => "other",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        [
            Self::MallTenant,
            Self::Cinema,
            Self::Restaurant,
            Self::Parking,
            Self::Other,
        ]
        .into_iter()
        .find(|category| category.code() == code)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MerchantStatus {
    Active,
    Suspended,
}

impl MerchantStatus {
    pub fn code(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            _ => None,
        }
    }
}

/// One signing key of a merchant, valid from `valid_from_ms` until `valid_until_ms`
/// (exclusive) unless revoked earlier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantKey {
    pub key_id: KeyId,
    pub public_key: VerifyingKey,
    pub valid_from_ms: i64,
    pub valid_until_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merchant {
    pub merchant_id: MerchantId,
    pub name: String,
    pub category: MerchantCategory,
    pub status: MerchantStatus,
    pub registered_at_ms: i64,
    pub keys: Vec<MerchantKey>,
}

/// Why an administrative change to the registry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("merchant {0} is already registered")]
    MerchantExists(MerchantId),
    #[error("merchant {0} is not registered")]
    MerchantUnknown(MerchantId),
    #[error("merchant {merchant_id} already has a key {key_id}")]
    KeyExists {
        merchant_id: MerchantId,
        key_id: KeyId,
    },
    #[error("merchant {merchant_id} has no key {key_id}")]
    KeyUnknown {
        merchant_id: MerchantId,
        key_id: KeyId,
    },
    #[error("key {key_id} of merchant {merchant_id} is already revoked")]
    KeyAlreadyRevoked {
        merchant_id: MerchantId,
        key_id: KeyId,
    },
    #[error("the key's validity ends ({valid_until_ms}) before it starts ({valid_from_ms})")]
    ValidityInverted {
        valid_from_ms: i64,
        valid_until_ms: i64,
    },
    #[error("a merchant needs at least one key at registration")]
    NoKeys,
    #[error("the merchant name must be 1 to 200 characters")]
    NameInvalid,
    #[error("merchant id {merchant_id:?} {error}")]
    MerchantIdNotAllowed {
        merchant_id: String,
        error: crate::ids::MerchantIdError,
    },
    #[error(
        "the public key is already registered as key {key_id} of merchant {merchant_id}; a key belongs to one merchant"
    )]
    PublicKeyInUse {
        merchant_id: MerchantId,
        key_id: KeyId,
    },
}

/// The most characters in a merchant's display name.
pub const MERCHANT_NAME_LEN_MAX_CHARS: usize = 200;

#[derive(Debug, Clone, Default)]
pub struct Registry {
    merchants: HashMap<MerchantId, Merchant>,
}

impl Registry {
    pub fn merchant(&self, merchant_id: &MerchantId) -> Option<&Merchant> {
        self.merchants.get(merchant_id)
    }

    /// Refuses what a new registration may not take: a merchant id outside the alphabet of
    /// new merchants, or a public key registered already (to this or another merchant).
    /// Checked for new merchants and keys only; what was registered before is still read.
    pub fn check_new(
        &self,
        merchant_id: &MerchantId,
        keys: &[MerchantKey],
    ) -> Result<(), RegistryError> {
        if !self.merchants.contains_key(merchant_id) {
            crate::ids::check_new_merchant_id(merchant_id.as_str()).map_err(|error| {
                RegistryError::MerchantIdNotAllowed {
                    merchant_id: merchant_id.to_string(),
                    error,
                }
            })?;
        }
        for key in keys {
            for merchant in self.merchants.values() {
                if let Some(existing) = merchant
                    .keys
                    .iter()
                    .find(|existing| existing.public_key == key.public_key)
                {
                    return Err(RegistryError::PublicKeyInUse {
                        merchant_id: merchant.merchant_id.clone(),
                        key_id: existing.key_id.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn merchants(&self) -> impl Iterator<Item = &Merchant> {
        self.merchants.values()
    }

    /// Checks that `merchant_id` may sign with `key_id` at `now_ms` and returns the key.
    /// The checks run in the precedence order of the rejection codes.
    pub fn authorize(
        &self,
        merchant_id: &str,
        key_id: &str,
        now_ms: i64,
    ) -> Result<&VerifyingKey, Rejection> {
        let merchant = MerchantId::new(merchant_id)
            .ok()
            .and_then(|id| self.merchants.get(&id))
            .ok_or_else(|| {
                Rejection::new(
                    RejectionReason::MerchantUnknown,
                    format!("no merchant {merchant_id:?} is registered"),
                )
            })?;
        if merchant.status == MerchantStatus::Suspended {
            return Err(Rejection::new(
                RejectionReason::MerchantSuspended,
                format!("merchant {merchant_id} is suspended"),
            ));
        }
        let key = merchant
            .keys
            .iter()
            .find(|key| key.key_id.as_str() == key_id)
            .ok_or_else(|| {
                Rejection::new(
                    RejectionReason::KeyUnknown,
                    format!("merchant {merchant_id} has no key {key_id:?}"),
                )
            })?;
        if let Some(revoked_at_ms) = key.revoked_at_ms
            && revoked_at_ms <= now_ms
        {
            return Err(Rejection::new(
                RejectionReason::KeyRevoked,
                format!("key {key_id} of merchant {merchant_id} was revoked at {revoked_at_ms} ms"),
            ));
        }
        if now_ms < key.valid_from_ms {
            return Err(Rejection::new(
                RejectionReason::KeyNotYetValid,
                format!(
                    "key {key_id} of merchant {merchant_id} is valid from {} ms",
                    key.valid_from_ms
                ),
            ));
        }
        if let Some(valid_until_ms) = key.valid_until_ms
            && now_ms >= valid_until_ms
        {
            return Err(Rejection::new(
                RejectionReason::KeyExpired,
                format!("key {key_id} of merchant {merchant_id} expired at {valid_until_ms} ms"),
            ));
        }
        Ok(&key.public_key)
    }

    /// Adds a merchant with its first keys.
    pub fn register(&mut self, merchant: Merchant) -> Result<(), RegistryError> {
        if self.merchants.contains_key(&merchant.merchant_id) {
            return Err(RegistryError::MerchantExists(merchant.merchant_id));
        }
        let name_len = merchant.name.chars().count();
        if name_len == 0 || name_len > MERCHANT_NAME_LEN_MAX_CHARS {
            return Err(RegistryError::NameInvalid);
        }
        if merchant.keys.is_empty() {
            return Err(RegistryError::NoKeys);
        }
        for (index, key) in merchant.keys.iter().enumerate() {
            check_validity(key)?;
            if merchant.keys[..index]
                .iter()
                .any(|other| other.key_id == key.key_id)
            {
                return Err(RegistryError::KeyExists {
                    merchant_id: merchant.merchant_id.clone(),
                    key_id: key.key_id.clone(),
                });
            }
        }
        self.merchants
            .insert(merchant.merchant_id.clone(), merchant);
        Ok(())
    }

    pub fn add_key(
        &mut self,
        merchant_id: &MerchantId,
        key: MerchantKey,
    ) -> Result<(), RegistryError> {
        check_validity(&key)?;
        let merchant = self.merchant_mut(merchant_id)?;
        if merchant.keys.iter().any(|other| other.key_id == key.key_id) {
            return Err(RegistryError::KeyExists {
                merchant_id: merchant_id.clone(),
                key_id: key.key_id,
            });
        }
        merchant.keys.push(key);
        Ok(())
    }

    pub fn revoke_key(
        &mut self,
        merchant_id: &MerchantId,
        key_id: &KeyId,
        revoked_at_ms: i64,
    ) -> Result<(), RegistryError> {
        let merchant = self.merchant_mut(merchant_id)?;
        let key = merchant
            .keys
            .iter_mut()
            .find(|key| &key.key_id == key_id)
            .ok_or_else(|| RegistryError::KeyUnknown {
                merchant_id: merchant_id.clone(),
                key_id: key_id.clone(),
            })?;
        if key.revoked_at_ms.is_some() {
            return Err(RegistryError::KeyAlreadyRevoked {
                merchant_id: merchant_id.clone(),
                key_id: key_id.clone(),
            });
        }
        key.revoked_at_ms = Some(revoked_at_ms);
        Ok(())
    }

    pub fn set_status(
        &mut self,
        merchant_id: &MerchantId,
        status: MerchantStatus,
    ) -> Result<(), RegistryError> {
        self.merchant_mut(merchant_id)?.status = status;
        Ok(())
    }

    fn merchant_mut(&mut self, merchant_id: &MerchantId) -> Result<&mut Merchant, RegistryError> {
        self.merchants
            .get_mut(merchant_id)
            .ok_or_else(|| RegistryError::MerchantUnknown(merchant_id.clone()))
    }
}

fn check_validity(key: &MerchantKey) -> Result<(), RegistryError> {
    match key.valid_until_ms {
        Some(valid_until_ms) if valid_until_ms <= key.valid_from_ms => {
            Err(RegistryError::ValidityInverted {
                valid_from_ms: key.valid_from_ms,
                valid_until_ms,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn registry() -> Registry {
        let mut registry = Registry::default();
        let key = |id: &str, from: i64, until: Option<i64>| MerchantKey {
            key_id: KeyId::new(id).unwrap(),
            public_key: SigningKey::from_bytes(&[9; 32]).verifying_key(),
            valid_from_ms: from,
            valid_until_ms: until,
            revoked_at_ms: None,
        };
        registry
            .register(Merchant {
                merchant_id: MerchantId::new("tenant").unwrap(),
                name: "Tenant".into(),
                category: MerchantCategory::MallTenant,
                status: MerchantStatus::Active,
                registered_at_ms: 0,
                keys: vec![
                    key("current", 0, None),
                    key("later", 500, None),
                    key("old", 0, Some(100)),
                ],
            })
            .unwrap();
        registry
    }

    fn reason(registry: &Registry, merchant: &str, key: &str, now: i64) -> Option<RejectionReason> {
        registry
            .authorize(merchant, key, now)
            .err()
            .map(|rejection| rejection.reason)
    }

    #[test]
    fn authorization_follows_key_lifecycles() {
        let mut registry = registry();
        let tenant = MerchantId::new("tenant").unwrap();
        assert_eq!(reason(&registry, "tenant", "current", 200), None);
        assert_eq!(
            reason(&registry, "nobody", "current", 200),
            Some(RejectionReason::MerchantUnknown)
        );
        assert_eq!(
            reason(&registry, "tenant", "missing", 200),
            Some(RejectionReason::KeyUnknown)
        );
        assert_eq!(
            reason(&registry, "tenant", "later", 499),
            Some(RejectionReason::KeyNotYetValid)
        );
        assert_eq!(reason(&registry, "tenant", "later", 500), None);
        assert_eq!(reason(&registry, "tenant", "old", 99), None);
        assert_eq!(
            reason(&registry, "tenant", "old", 100),
            Some(RejectionReason::KeyExpired)
        );
        registry
            .revoke_key(&tenant, &KeyId::new("current").unwrap(), 300)
            .unwrap();
        assert_eq!(reason(&registry, "tenant", "current", 299), None);
        assert_eq!(
            reason(&registry, "tenant", "current", 300),
            Some(RejectionReason::KeyRevoked)
        );
        registry
            .set_status(&tenant, MerchantStatus::Suspended)
            .unwrap();
        assert_eq!(
            reason(&registry, "tenant", "later", 600),
            Some(RejectionReason::MerchantSuspended)
        );
    }
}
