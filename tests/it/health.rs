//! The admin listener: `/health/alive` and `/health/ready` (DESIGN.md §5), as Ory services answer them.

use crate::support::*;

async fn ready(iris: &TestIris) -> Answer {
    get(format!("http://{}/health/ready", iris.admin)).await
}

/// Ready flips to 503 naming Kratos when Kratos stops, and back to 200 when it returns.
#[tokio::test]
async fn ready_follows_kratos() {
    let (kratos, iris) = start_with_alice().await;
    let up = ready(&iris).await;
    assert_eq!(
        (up.status, up.json["status"].as_str()),
        (200, Some("ok")),
        "{}",
        up.json
    );
    kratos.stop();
    let down = ready(&iris).await;
    assert_eq!(down.status, 503, "{}", down.json);
    assert!(down.json["errors"]["kratos"].is_string(), "{}", down.json);
    // Alive only says the process is up.
    let alive = get(format!("http://{}/health/alive", iris.admin)).await;
    assert_eq!(alive.status, 200);
    kratos.restart().await;
    let back = ready(&iris).await;
    assert_eq!(back.status, 200, "{}", back.json);
    assert_eq!(exchange_as_orders(&iris, &[]).await.status, 200);
}
