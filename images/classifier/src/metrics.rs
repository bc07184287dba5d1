//! Prometheus metrics, in the text exposition format, at `GET /metrics`: requests by route
//! and status, request, decode and inference time histograms, the model's load time, the
//! uploads and inferences in progress, and rejected uploads. Not in the OpenAPI
//! document: it is for the machine the service runs on (imgforge's nginx does not forward
//! it), not for the API's clients.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Histogram bucket bounds, seconds: from a cached answer to a slow upload.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations at or below each bound (not cumulative: summed when rendered).
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{}le=\"{bound}\"}} {cumulative}",
                comma(labels)
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{}le=\"+Inf\"}} {}",
            comma(labels),
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

fn comma(labels: &str) -> &'static str {
    if labels.is_empty() {
        ""
    } else {
        ","
    }
}

#[derive(Debug, Default)]
struct Counts {
    requests: BTreeMap<(&'static str, u16), u64>,
    request_seconds: BTreeMap<&'static str, Histogram>,
    decode_seconds: Histogram,
    inference_seconds: Histogram,
    rejected_uploads: BTreeMap<u16, u64>,
}

/// The service's counters. Routes are the router's own patterns (a bounded set), never
/// a client's path.
#[derive(Debug, Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
    model_load_seconds: f64,
}

/// What is in progress when the metrics are read.
#[derive(Debug, Clone, Copy)]
pub struct InProgress {
    pub uploads: usize,
    pub max_uploads: usize,
    pub inferences: usize,
    pub max_inferences: usize,
}

impl Metrics {
    pub fn new(model_load_seconds: f64) -> Self {
        Metrics {
            counts: Mutex::default(),
            model_load_seconds,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Counts) -> T) -> T {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut counts)
    }

    /// A request answered: its route pattern, status and time. An upload `POST /predict`
    /// refused (4xx, or 503 when busy) is a rejected upload too.
    pub fn request(&self, route: &'static str, status: u16, seconds: f64) {
        self.with(|c| {
            *c.requests.entry((route, status)).or_default() += 1;
            c.request_seconds.entry(route).or_default().observe(seconds);
            if route == "/predict" && status >= 400 && status != 500 {
                *c.rejected_uploads.entry(status).or_default() += 1;
            }
        });
    }

    pub fn decode(&self, seconds: f64) {
        self.with(|c| c.decode_seconds.observe(seconds));
    }

    pub fn inference(&self, seconds: f64) {
        self.with(|c| c.inference_seconds.observe(seconds));
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self, now: InProgress) -> String {
        let mut out = String::new();
        let c = self.with(|c| {
            (
                c.requests.clone(),
                c.request_seconds.clone(),
                c.decode_seconds.clone(),
                c.inference_seconds.clone(),
                c.rejected_uploads.clone(),
            )
        });
        let (requests, request_seconds, decode, inference, rejected) = c;
        let mut sections: Vec<(&str, &str, &str, String)> = Vec::new();
        let mut text = String::new();
        for ((route, status), n) in &requests {
            let _ = writeln!(
                text,
                "classifier_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        sections.push((
            "classifier_requests_total",
            "counter",
            "Requests answered, by route and status.",
            text,
        ));
        let mut text = String::new();
        for (route, h) in &request_seconds {
            h.render(
                &mut text,
                "classifier_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        sections.push((
            "classifier_request_duration_seconds",
            "histogram",
            "Time from the request's arrival to its answer, by route.",
            text,
        ));
        for (name, h, help) in [
            (
                "classifier_decode_seconds",
                &decode,
                "Time to decode and resize an upload.",
            ),
            (
                "classifier_inference_seconds",
                &inference,
                "Time the model takes for one image.",
            ),
        ] {
            let mut text = String::new();
            h.render(&mut text, name, "");
            sections.push((name, "histogram", help, text));
        }
        let mut text = String::new();
        for (status, n) in &rejected {
            let _ = writeln!(
                text,
                "classifier_rejected_uploads_total{{status=\"{status}\"}} {n}"
            );
        }
        sections.push((
            "classifier_rejected_uploads_total",
            "counter",
            "Uploads refused: too large, not an image, or the service busy (503).",
            text,
        ));
        for (name, value, help) in [
            (
                "classifier_model_load_seconds",
                self.model_load_seconds,
                "Time the model took to load at start-up.",
            ),
            (
                "classifier_uploads_in_progress",
                now.uploads as f64,
                "Uploads being received or waiting for their prediction.",
            ),
            (
                "classifier_uploads_max",
                now.max_uploads as f64,
                "Uploads held at once before the service answers 503.",
            ),
            (
                "classifier_inferences_in_progress",
                now.inferences as f64,
                "Images the model works on now.",
            ),
            (
                "classifier_inferences_max",
                now.max_inferences as f64,
                "Images the model works on at once (its sessions).",
            ),
        ] {
            sections.push((name, "gauge", help, format!("{name} {value}\n")));
        }
        for (name, kind, help, text) in sections {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            out.push_str(&text);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> InProgress {
        InProgress {
            uploads: 1,
            max_uploads: 8,
            inferences: 0,
            max_inferences: 2,
        }
    }

    #[test]
    fn counters_and_cumulative_buckets_render_in_the_text_format() {
        let m = Metrics::new(1.5);
        m.request("/predict", 200, 0.02);
        m.request("/predict", 200, 0.3);
        m.request("/predict", 413, 0.001);
        m.request("/health", 200, 0.0005);
        m.inference(0.007);
        let text = m.render(idle());
        for line in [
            "classifier_requests_total{route=\"/predict\",status=\"200\"} 2",
            "classifier_requests_total{route=\"/predict\",status=\"413\"} 1",
            "classifier_requests_total{route=\"/health\",status=\"200\"} 1",
            "classifier_request_duration_seconds_bucket{route=\"/predict\",le=\"0.025\"} 2",
            "classifier_request_duration_seconds_bucket{route=\"/predict\",le=\"0.25\"} 2",
            "classifier_request_duration_seconds_bucket{route=\"/predict\",le=\"0.5\"} 3",
            "classifier_request_duration_seconds_bucket{route=\"/predict\",le=\"+Inf\"} 3",
            "classifier_request_duration_seconds_count{route=\"/predict\"} 3",
            "classifier_inference_seconds_bucket{le=\"0.01\"} 1",
            "classifier_inference_seconds_count 1",
            "classifier_decode_seconds_count 0",
            "classifier_rejected_uploads_total{status=\"413\"} 1",
            "classifier_model_load_seconds 1.5",
            "classifier_uploads_in_progress 1",
            "classifier_inferences_max 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        // Every family is announced once, before its samples.
        for name in ["classifier_requests_total", "classifier_inference_seconds"] {
            assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1);
        }
    }
}
