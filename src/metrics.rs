//! Prometheus metrics, served at `/metrics/prometheus` on the admin listener. Labels take values
//! from small fixed sets (routes, outcomes, upstreams) or from authenticated client ids, never
//! from raw request input, so an attacker cannot grow the series without bound.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `route` and `status` of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// A fixed route name: `token`, `discovery`, `jwks`, `bridge`, `pass_through`, `health`, ...
    pub route: &'static str,
    /// The HTTP status.
    pub status: u16,
}

/// `route` of a request duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// A fixed route name.
    pub route: &'static str,
}

/// An exchange's client and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExchangeLabels {
    /// The authenticated client, or `-` when none was.
    pub client_id: String,
    /// `issued`, or the RFC 6749 error code.
    pub outcome: &'static str,
}

/// An upstream call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// `kratos` or `hydra`.
    pub upstream: &'static str,
    /// `whoami`, `client`, `jwt_bearer`, `discovery`, `jwks`, `trust`, `pass_through`.
    pub operation: &'static str,
}

/// The listener a connection came in on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `public` or `admin`.
    pub listener: &'static str,
}

/// One listener's connection gauges.
#[derive(Clone, Debug, Default)]
pub struct ConnectionGauges {
    /// Connections open.
    pub open: Gauge,
    /// Idle keep-alive connections parked without buffers (a subset of `open`).
    pub parked: Gauge,
}

/// Iris's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram>,
    exchanges: Family<ExchangeLabels, Counter>,
    upstream_duration: Family<UpstreamLabels, Histogram>,
    open_connections: Family<ListenerLabels, Gauge>,
    parked_connections: Family<ListenerLabels, Gauge>,
    idle_upstreams: Gauge,
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("iris");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let exchanges = Family::<ExchangeLabels, Counter>::default();
        let upstream_duration = Family::<UpstreamLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_requests",
            "Requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Request latency by route",
            request_duration.clone(),
        );
        registry.register(
            "token_exchanges",
            "Token exchanges by client and outcome",
            exchanges.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Latency of calls to Kratos and Hydra",
            upstream_duration.clone(),
        );
        let open_connections = Family::<ListenerLabels, Gauge>::default();
        let parked_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "open_connections",
            "Client connections open, by listener",
            open_connections.clone(),
        );
        registry.register(
            "parked_connections",
            "Idle keep-alive connections parked without buffers, by listener",
            parked_connections.clone(),
        );
        let idle_upstreams = Gauge::default();
        registry.register(
            "upstream_idle_connections",
            "Idle connections to Hydra's public port, kept for the next client connection",
            idle_upstreams.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            exchanges,
            upstream_duration,
            open_connections,
            parked_connections,
            idle_upstreams,
        }
    }

    /// The gauge of idle upstream connections to Hydra's public port.
    pub fn idle_upstreams(&self) -> Gauge {
        self.idle_upstreams.clone()
    }

    /// The connection gauges of `listener` (`public` or `admin`).
    pub fn connections(&self, listener: &'static str) -> ConnectionGauges {
        let labels = ListenerLabels { listener };
        ConnectionGauges {
            open: self.open_connections.get_or_create(&labels).clone(),
            parked: self.parked_connections.get_or_create(&labels).clone(),
        }
    }

    /// One request answered on `route`.
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    /// One exchange (or bridge issuance) and how it ended.
    pub fn exchange(&self, client_id: Option<&str>, outcome: &'static str) {
        let client_id = client_id.unwrap_or("-").to_owned();
        self.exchanges
            .get_or_create(&ExchangeLabels { client_id, outcome })
            .inc();
    }

    /// One call to an upstream.
    pub fn upstream(&self, upstream: &'static str, operation: &'static str, took: Duration) {
        self.upstream_duration
            .get_or_create(&UpstreamLabels {
                upstream,
                operation,
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_appear_in_the_exposition() {
        let metrics = Metrics::new();
        metrics.request("token", 200, Duration::from_millis(3));
        metrics.exchange(Some("orders"), "issued");
        metrics.upstream("kratos", "whoami", Duration::from_millis(2));
        let text = metrics.encode();
        assert!(
            text.contains(r#"iris_http_requests_total{route="token",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"iris_token_exchanges_total{client_id="orders",outcome="issued"} 1"#)
        );
        assert!(text.contains(r#"iris_upstream_request_duration_seconds_count{upstream="kratos",operation="whoami"} 1"#));
        assert!(text.ends_with("# EOF\n"));
    }
}
