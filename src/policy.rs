//! What a client may ask for (DESIGN.md §3 steps 5–7) and which sessions are accepted (step 8).

use std::time::SystemTime;

use crate::clients::Client;
use crate::config::{Aal, PolicyConfig, TOKEN_EXCHANGE_GRANT};
use crate::exchange::ExchangeRequest;
use crate::kratos::Session;
use crate::tokens::RequestedTokenType;

/// The exchange policy.
pub type Policy = PolicyConfig;

/// What the client is granted: the scope and the audiences of the tokens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    /// Granted scopes (the requested ones; none requested means none granted).
    pub scope: Vec<String>,
    /// Granted audiences.
    pub audience: Vec<String>,
}

/// Why policy refuses an exchange.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Step 5: the client's `grant_types` lacks token exchange.
    #[error("the client is not allowed to use the token-exchange grant")]
    GrantNotAllowed,
    /// Step 5: session exchange is for first-party clients only.
    #[error("the client is not first-party (metadata.first_party) and the policy requires it")]
    NotFirstParty,
    /// Step 6.
    #[error("the client may not request the scope {0}")]
    ScopeNotAllowed(String),
    /// Step 7: a target outside the client's `audience` list.
    #[error("the client may not request a token for {0}")]
    TargetNotAllowed(String),
    /// Step 7: nothing requested and no single default.
    #[error("name the target with audience or resource: the client has {0} audiences")]
    TargetRequired(usize),
    /// Step 8: the session is not active, or its identity is not.
    #[error("the subject token is not an active Kratos session")]
    InactiveSession,
    /// Step 8: the session expired.
    #[error("the subject token's session has expired")]
    ExpiredSession,
    /// Step 8: `policy.required_aal`.
    #[error("the session's authenticator assurance level is {have}; {need} is required")]
    AalTooLow {
        /// The session's AAL.
        have: String,
        /// The required AAL.
        need: &'static str,
    },
}

/// Steps 5–7 for an authenticated client.
pub fn authorize(
    client: &Client,
    request: &ExchangeRequest,
    policy: &Policy,
) -> Result<Grant, PolicyError> {
    if !client.grant_types.iter().any(|g| g == TOKEN_EXCHANGE_GRANT) {
        return Err(PolicyError::GrantNotAllowed);
    }
    if policy.require_first_party && !client.first_party {
        return Err(PolicyError::NotFirstParty);
    }
    let mut scope = request.scope.clone();
    // DESIGN.md §8: requesting an ID token implies `openid`.
    if request.requested_token_type == RequestedTokenType::IdToken
        && !scope.iter().any(|s| s == "openid")
    {
        scope.insert(0, "openid".to_owned());
    }
    if let Some(extra) = scope.iter().find(|s| !client.scope.contains(s)) {
        return Err(PolicyError::ScopeNotAllowed(extra.clone()));
    }
    let audience = if request.targets.is_empty() {
        match client.audience.as_slice() {
            [only] => vec![only.clone()],
            all => return Err(PolicyError::TargetRequired(all.len())),
        }
    } else {
        if let Some(target) = request
            .targets
            .iter()
            .find(|t| !client.audience.contains(t))
        {
            return Err(PolicyError::TargetNotAllowed(target.clone()));
        }
        request.targets.clone()
    };
    Ok(Grant { scope, audience })
}

/// Step 8, after Kratos answered 200: the session must be usable under the policy.
pub fn admit_session(
    session: &Session,
    policy: &Policy,
    now: SystemTime,
) -> Result<(), PolicyError> {
    if !session.active || session.identity_state != "active" {
        return Err(PolicyError::InactiveSession);
    }
    if session.expires_at <= now {
        return Err(PolicyError::ExpiredSession);
    }
    let need = match policy.required_aal {
        Aal::Aal1 => ("aal1", 1),
        Aal::Aal2 => ("aal2", 2),
    };
    let have = match session.aal.as_str() {
        "aal1" => 1,
        "aal2" => 2,
        "aal3" => 3,
        _ => 0,
    };
    if have < need.1 {
        return Err(PolicyError::AalTooLow {
            have: session.aal.clone(),
            need: need.0,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn session(aal: &str) -> Session {
        let now = SystemTime::now();
        Session {
            id: "s".into(),
            identity_id: "i".into(),
            active: true,
            identity_state: "active".into(),
            expires_at: now + Duration::from_secs(60),
            authenticated_at: now,
            aal: aal.into(),
            amr: vec!["password".into()],
            email: None,
            email_verified: false,
            cacheable_for: None,
        }
    }

    fn policy(required_aal: Aal) -> Policy {
        Policy {
            require_first_party: true,
            required_aal,
        }
    }

    /// Kratos never answers 200 with an inactive session, but Iris does not rely on that.
    #[test]
    fn inactive_or_expired_sessions_are_refused_even_on_a_200() {
        let now = SystemTime::now();
        assert!(admit_session(&session("aal1"), &policy(Aal::Aal1), now).is_ok());
        let mut inactive = session("aal1");
        inactive.active = false;
        assert!(matches!(
            admit_session(&inactive, &policy(Aal::Aal1), now),
            Err(PolicyError::InactiveSession)
        ));
        let mut blocked = session("aal1");
        blocked.identity_state = "inactive".into();
        assert!(matches!(
            admit_session(&blocked, &policy(Aal::Aal1), now),
            Err(PolicyError::InactiveSession)
        ));
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            admit_session(&session("aal1"), &policy(Aal::Aal1), later),
            Err(PolicyError::ExpiredSession)
        ));
    }

    #[test]
    fn the_required_aal_is_a_floor() {
        let now = SystemTime::now();
        assert!(admit_session(&session("aal2"), &policy(Aal::Aal2), now).is_ok());
        assert!(admit_session(&session("aal3"), &policy(Aal::Aal2), now).is_ok());
        for weak in ["aal1", "aal0", "", "v0.6_legacy_session"] {
            assert!(
                matches!(
                    admit_session(&session(weak), &policy(Aal::Aal2), now),
                    Err(PolicyError::AalTooLow { .. })
                ),
                "{weak}"
            );
        }
        assert!(matches!(
            admit_session(&session("aal0"), &policy(Aal::Aal1), now),
            Err(PolicyError::AalTooLow { .. })
        ));
    }
}
