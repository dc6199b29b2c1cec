//! DESIGN.md §3 holds in every mode: standalone, synthesize in front of Hydra, and forward. Each
//! rule is checked once more here in front of Hydra, where a refusal must come from Iris, never
//! reach Kratos (steps 1–7) and never reach Hydra.

use serde_json::json;

use crate::support::hydra::{Hydra, HydraClient};
use crate::support::*;
use iris::config::{HydraConfig, IssueMode, TOKEN_EXCHANGE_GRANT};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Why, the form, the client authentication, the status and the `error` expected.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Auth<'a>, u16, &'a str);

/// Iris in front of Hydra in `mode`, with the fixture clients; Hydra knows `orders-service`
/// with the same secret, so forward mode can succeed.
async fn in_front(mode: IssueMode) -> (Kratos, Hydra, TestIris) {
    let kratos = Kratos::start().await;
    kratos.add_token(ALICE_TOKEN, Entry::Session(SessionRecord::alice()));
    let hydra = Hydra::start().await;
    let mut orders = HydraClient::basic("orders-service", ORDERS_SECRET)
        .with_grants(&[TOKEN_EXCHANGE_GRANT, JWT_BEARER])
        .with_scope("openid email profile orders:read")
        .with_audience(&[ORDERS_API]);
    orders.metadata = json!({"first_party": true});
    hydra.add_client(orders);
    let mut raw = config(&kratos);
    let mut section = HydraConfig {
        public_url: hydra.public_url(),
        admin_url: hydra.admin_url(),
        ..Default::default()
    };
    section.trust.scope = vec!["openid".into(), "email".into(), "orders:read".into()];
    raw.hydra = Some(section);
    raw.tokens.issue = mode;
    let iris = TestIris::start(raw).await;
    (kratos, hydra, iris)
}

/// Every refusal of §3, in both modes in front of Hydra: the same status and error as standalone.
#[tokio::test]
async fn every_rule_holds_in_front_of_hydra() {
    for mode in [IssueMode::Synthesize, IssueMode::Forward] {
        let (kratos, hydra, iris) = in_front(mode).await;
        let orders = Auth::Basic("orders-service", ORDERS_SECRET);
        let big = "x".repeat(70 * 1024);
        let cases: Vec<Case> = vec![
            (
                "413",
                exchange_form(ALICE_TOKEN, &[("padding", &big)]),
                orders,
                413,
                "invalid_request",
            ),
            (
                "repeated scope",
                exchange_form(ALICE_TOKEN, &[("scope", "a"), ("scope", "b")]),
                orders,
                400,
                "invalid_request",
            ),
            (
                "no subject_token",
                exchange_form("", &[]),
                orders,
                400,
                "invalid_request",
            ),
            (
                "actor without type",
                exchange_form(ALICE_TOKEN, &[("actor_token", "x")]),
                orders,
                400,
                "invalid_request",
            ),
            (
                "actor pair",
                exchange_form(
                    ALICE_TOKEN,
                    &[("actor_token", "x"), ("actor_token_type", SESSION_TYPE)],
                ),
                orders,
                400,
                "invalid_request",
            ),
            (
                "requested type",
                exchange_form(ALICE_TOKEN, &[("requested_token_type", "urn:x")]),
                orders,
                400,
                "invalid_request",
            ),
            (
                "relative resource",
                exchange_form(ALICE_TOKEN, &[("resource", "x")]),
                orders,
                400,
                "invalid_target",
            ),
            (
                "wrong secret",
                exchange_form(ALICE_TOKEN, &[]),
                Auth::Basic("orders-service", "wrong"),
                401,
                "invalid_client",
            ),
            (
                "no credentials",
                exchange_form(ALICE_TOKEN, &[]),
                Auth::None,
                401,
                "invalid_client",
            ),
            (
                "two methods",
                exchange_form(
                    ALICE_TOKEN,
                    &[("client_secret", "x"), ("client_id", "orders-service")],
                ),
                orders,
                400,
                "invalid_request",
            ),
            (
                "no grant",
                exchange_form(ALICE_TOKEN, &[]),
                Auth::Basic("no-grant", ORDERS_SECRET),
                400,
                "unauthorized_client",
            ),
            (
                "third party",
                exchange_form(ALICE_TOKEN, &[]),
                Auth::Basic("third-party", ORDERS_SECRET),
                400,
                "unauthorized_client",
            ),
            (
                "scope",
                exchange_form(ALICE_TOKEN, &[("scope", "admin")]),
                orders,
                400,
                "invalid_scope",
            ),
            (
                "audience",
                exchange_form(ALICE_TOKEN, &[("audience", "https://billing.example.com")]),
                orders,
                400,
                "invalid_target",
            ),
            (
                "several audiences",
                exchange_form(ALICE_TOKEN, &[]),
                Auth::Basic("multi-aud", ORDERS_SECRET),
                400,
                "invalid_target",
            ),
        ];
        for (why, pairs, auth, status, error) in cases {
            let answer = post_form(&iris, &pairs, auth).await;
            assert_eq!(
                (answer.status, answer.error()),
                (status, error),
                "{mode:?} {why}: {}",
                answer.json
            );
            answer.assert_no_store();
        }
        assert_eq!(
            kratos.calls(),
            0,
            "{mode:?}: Kratos is never called before step 8"
        );
        // Step 8.
        let unknown = post_form(&iris, &exchange_form("ory_st_unknown", &[]), orders).await;
        assert_eq!(
            (unknown.status, unknown.error()),
            (400, "invalid_request"),
            "{mode:?}"
        );
        kratos.add_token("broken", Entry::Fault(Fault::Status(500)));
        let broken = post_form(&iris, &exchange_form("broken", &[]), orders).await;
        assert_eq!(
            (broken.status, broken.error()),
            (503, "temporarily_unavailable"),
            "{mode:?}"
        );
        // And a valid exchange succeeds.
        let ok = post_form(
            &iris,
            &exchange_form(ALICE_TOKEN, &[("scope", "openid orders:read")]),
            orders,
        )
        .await;
        assert_eq!(ok.status, 200, "{mode:?}: {}", ok.json);
        assert!(ok.json["id_token"].is_string());
        assert!(!hydra.saw_token_exchange(), "{mode:?}");
        let forwarded = hydra.token_requests().len();
        assert_eq!(
            forwarded,
            usize::from(mode == IssueMode::Forward),
            "{mode:?}: only forward mode asks Hydra, once"
        );
    }
}
