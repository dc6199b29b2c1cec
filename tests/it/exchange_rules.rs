//! DESIGN.md §3 steps 1–3: the request itself. Kratos is never called when one of them fails.

use crate::support::*;

#[tokio::test]
async fn a_valid_exchange_succeeds() {
    let (kratos, iris) = start_with_alice().await;
    let answer = exchange_as_orders(&iris, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer.assert_no_store();
    assert_eq!(answer.json["token_type"], "Bearer");
    assert_eq!(
        answer.json["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(kratos.calls(), 1);
    assert_eq!(
        kratos.call_log()[0].session_token.as_deref(),
        Some(ALICE_TOKEN)
    );
    iris.stop().await;
}
