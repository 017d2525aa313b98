//! A user's profile: rarely changes, cached an hour, deleted on write.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What `GET /api/users/{id}/profile` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Profile {
    /// The user.
    #[schema(value_type = crate::schema::UserId)]
    pub user_id: i64,
    /// Display name.
    pub name: String,
    /// Contact address.
    #[schema(format = Email)]
    pub email: String,
}

/// The body of `PUT /api/users/{id}/profile`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    /// New display name: 1 to 100 characters, not all blank (it is trimmed).
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    /// New address, like name@example.com (it is trimmed).
    #[schema(format = Email, max_length = 254)]
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
