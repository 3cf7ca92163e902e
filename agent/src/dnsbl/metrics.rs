//! Per-zone DNSBL metrics, registered only when `[dnsbl]` is configured.

use std::time::Duration;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub queries: IntCounterVec,
    pub listings: IntCounterVec,
    pub errors: IntCounterVec,
    pub latency: HistogramVec,
    pub cache_entries: IntGauge,
    pub cache_hit: IntCounter,
    pub cache_miss: IntCounter,
    pub quarantined: IntGaugeVec,
    cache_requests: IntCounterVec,
}

impl Metrics {
    /// Every zone's series exist from the start (at 0), so rate() works at once.
    pub fn new<'a>(zones: impl Iterator<Item = &'a str>) -> Self {
        let cv = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("constant metric definition")
        };
        let cache_requests = cv(
            "prefilter_dnsbl_cache_requests_total",
            "DNSBL answers wanted, by whether the cache had them (hit ratio = hit / all).",
            &["result"],
        );
        let m = Self {
            queries: cv(
                "prefilter_dnsbl_queries_total",
                "DNS queries sent, by zone (probes included).",
                &["zone"],
            ),
            listings: cv(
                "prefilter_dnsbl_listings_total",
                "Answers that listed a client, by zone (health probes of the test points not counted).",
                &["zone"],
            ),
            errors: cv(
                "prefilter_dnsbl_errors_total",
                "Lookups without a usable answer (timeout, servfail, refused, error_code, other), by zone; never counted as listings.",
                &["zone", "kind"],
            ),
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "prefilter_dnsbl_query_duration_seconds",
                    "Time to a DNSBL answer, by zone.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["zone"],
            )
            .expect("constant metric definition"),
            cache_entries: IntGauge::new(
                "prefilter_dnsbl_cache_entries",
                "(address, zone) answers in the DNSBL cache.",
            )
            .expect("constant metric definition"),
            cache_hit: cache_requests.with_label_values(&["hit"]),
            cache_miss: cache_requests.with_label_values(&["miss"]),
            quarantined: IntGaugeVec::new(
                Opts::new(
                    "prefilter_dnsbl_zone_quarantined",
                    "1 while a zone failed its RFC 5782 test points and its answers are ignored.",
                ),
                &["zone"],
            )
            .expect("constant metric definition"),
            cache_requests,
        };
        for z in zones {
            m.queries.with_label_values(&[z]);
            m.listings.with_label_values(&[z]);
            m.quarantined.with_label_values(&[z]);
            // At 0 from the start, so a rate() or an alert on them works before the first.
            for kind in ["timeout", "servfail", "refused", "error_code", "other"] {
                m.errors.with_label_values(&[z, kind]);
            }
        }
        m
    }

    pub fn observe(&self, zone: &str, took: Duration) {
        self.latency
            .with_label_values(&[zone])
            .observe(took.as_secs_f64());
    }

    pub fn register(&self, r: &Registry) {
        // Distinct names in a registry that has none of them: cannot fail.
        let _ = r.register(Box::new(self.queries.clone()));
        let _ = r.register(Box::new(self.listings.clone()));
        let _ = r.register(Box::new(self.errors.clone()));
        let _ = r.register(Box::new(self.latency.clone()));
        let _ = r.register(Box::new(self.cache_entries.clone()));
        let _ = r.register(Box::new(self.cache_requests.clone()));
        let _ = r.register(Box::new(self.quarantined.clone()));
    }
}
