//! A user's profile: rarely changes, cached an hour, deleted on write.

use serde::{Deserialize, Serialize};

/// What `GET /api/users/{id}/profile` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The user.
    pub user_id: i64,
    /// Display name.
    pub name: String,
    /// Contact address.
    pub email: String,
}

/// The body of `PUT /api/users/{id}/profile`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    /// New display name (1 to 100 characters).
    pub name: String,
    /// New address (must look like one).
    pub email: String,
}

impl ProfileUpdate {
    /// Checks the fields; the error says which and why.
    pub fn validate(&self) -> Result<(), String> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err("name must be 1 to 100 characters".into());
        }
        let email = self.email.trim();
        let valid = email.len() <= 254
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
            })
            && !email.contains(char::is_whitespace);
        if !valid {
            return Err("email must be an address like name@example.com".into());
        }
        Ok(())
    }
}
