package proxy

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Metrics are the proxy's Prometheus collectors.
type Metrics struct {
	reg       prometheus.Registerer
	requests  *prometheus.CounterVec
	refusals  *prometheus.CounterVec
	warnings  *prometheus.CounterVec
	upstream  *prometheus.HistogramVec
	ledgerOps *prometheus.HistogramVec
	bytes     *prometheus.CounterVec
	drift     *prometheus.GaugeVec
	verifies  *prometheus.CounterVec
	verified  prometheus.Gauge
	uploads   prometheus.Gauge
	cache     *prometheus.CounterVec
	cacheSize prometheus.Gauge
}

// NewMetrics registers the proxy's collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taglock_requests_total", Help: "Requests by route, method and status.",
		}, []string{"route", "method", "code"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taglock_refusals_total", Help: "Requests refused by policy, by reason.",
		}, []string{"reason"}),
		warnings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taglock_warn_total", Help: "Requests warn mode let through that immutable mode would have refused, by reason.",
		}, []string{"reason"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "taglock_upstream_duration_seconds",
			Help:    "Time until the upstream's response headers: op=forward for proxied client requests, op=lookup for taglock's own requests, by method.",
			Buckets: prometheus.DefBuckets,
		}, []string{"op", "method"}),
		ledgerOps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "taglock_ledger_duration_seconds",
			Help:    "Ledger operations the proxy performs, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8), // 0.1 ms to 1.6 s
		}, []string{"op"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taglock_proxied_bytes_total",
			Help: "Bytes streamed through the proxy: direction=in from clients to the upstream, out from the upstream to clients.",
		}, []string{"direction"}),
		drift: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "taglock_drift_findings",
			Help: "Tags the last scheduled verify found changed on the upstream around taglock, by kind (moved, deleted, new) and mode.",
		}, []string{"kind", "mode"}),
		verifies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taglock_verify_runs_total", Help: "Scheduled verify runs, by result (clean, drift, error).",
		}, []string{"result"}),
		verified: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "taglock_verify_last_success_timestamp_seconds", Help: "When a scheduled verify last completed (Unix time); 0 before the first.",
		}),
		uploads: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "taglock_uploads_in_flight",
			Help: "Blob upload requests (POST, PATCH and PUT of blobs/uploads) being served; limits.max_concurrent_uploads caps them.",
		}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taglock_manifest_cache_total",
			Help: "Manifest reads by result: hit, answered from what taglock holds; bypass, left to the upstream; confirm, left to the upstream to confirm the caller (upstream.auth passthrough); fill, bytes taken into memory.",
		}, []string{"result"}),
		cacheSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "taglock_manifest_cache_bytes", Help: "Manifest bytes held in memory, with a per-entry overhead; cache.size bounds it.",
		}),
	}
	reg.MustRegister(m.requests, m.refusals, m.warnings, m.upstream, m.ledgerOps, m.bytes, m.drift, m.verifies, m.verified, m.uploads,
		m.cache, m.cacheSize)
	for _, r := range []string{"hit", "bypass", "confirm", "fill"} {
		m.cache.WithLabelValues(r)
	}
	for _, d := range []string{"in", "out"} {
		m.bytes.WithLabelValues(d)
	}
	return m
}

func (m *Metrics) request(route, method string, code int) {
	if route == "" {
		route = "invalid"
	}
	m.requests.WithLabelValues(route, method, strconv.Itoa(code)).Inc()
}

// cached counts a manifest read's result; nil records nothing.
func (m *Metrics) cached(result string) {
	if m != nil {
		m.cache.WithLabelValues(result).Inc()
	}
}

// cacheBytes sets the bytes the manifest cache holds; nil records nothing.
func (m *Metrics) cacheBytes(n int64) {
	if m != nil {
		m.cacheSize.Set(float64(n))
	}
}

func (m *Metrics) refused(reason string) { m.refusals.WithLabelValues(reason).Inc() }
func (m *Metrics) warned(reason string)  { m.warnings.WithLabelValues(reason).Inc() }

// ObserveLedger records how long a ledger operation took since start.
func (m *Metrics) ObserveLedger(op string, start time.Time) {
	m.ledgerOps.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// Verified records the outcome of a scheduled verify: the findings replace
// the previous run's in taglock_drift_findings. A nil report with err set
// counts a failed run and keeps the previous findings.
func (m *Metrics) Verified(rep *VerifyReport, err error, at time.Time) {
	if err != nil || rep == nil {
		m.verifies.WithLabelValues("error").Inc()
		return
	}
	m.drift.Reset()
	for _, kind := range []string{DriftMoved, DriftDeleted, DriftNew, DriftIncomplete} {
		m.drift.WithLabelValues(kind, policy.Immutable.String())
	}
	for _, f := range rep.Findings {
		m.drift.WithLabelValues(f.Kind, f.Mode.String()).Inc()
	}
	result := "clean"
	if len(rep.Findings) > 0 {
		result = "drift"
	}
	m.verifies.WithLabelValues(result).Inc()
	m.verified.Set(float64(at.Unix()))
}

// LedgerReader is what the scrape-time ledger collector reads. Counts of
// the whole ledger (repo "") must be cheap: a backend that reads every
// binding to count them is given with a cache in front (serve's).
type LedgerReader interface {
	Counts(ctx context.Context, repo string) (storage.Counts, error)
	Reservations(ctx context.Context) ([]storage.Reservation, error)
}

// LostEventsCounter is a ledger that counts history events it could not
// record after the bindings they describe (the etcd backend).
type LostEventsCounter interface {
	LostEvents() uint64
}

// WatchLostEvents registers taglock_ledger_events_lost_total, read from lc
// when Prometheus scrapes.
func (m *Metrics) WatchLostEvents(lc LostEventsCounter) {
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "taglock_ledger_events_lost_total",
		Help: "History events the ledger could not record after the bindings they describe (each is also logged).",
	}, func() float64 { return float64(lc.LostEvents()) }))
}

// WatchLedger registers gauges read from l when Prometheus scrapes:
// taglock_tags{mode} (deleted tags as mode="deleted") from l.Counts and
// taglock_reservations_pending. A scrape reads no binding.
func (m *Metrics) WatchLedger(l LedgerReader) {
	m.reg.MustRegister(&ledgerCollector{l: l,
		tags: prometheus.NewDesc("taglock_tags", "Tags the ledger records, by mode; deleted tags (tombstones) as mode=\"deleted\".", []string{"mode"}, nil),
		pending: prometheus.NewDesc("taglock_reservations_pending",
			"Manifest pushes reserved in the ledger and not yet committed or released (in flight, or left by a crash).", nil, nil),
		failed: prometheus.NewDesc("taglock_ledger_scrape_errors_total", "Scrapes that could not read the ledger.", nil, nil),
	})
}

// ledgerCollector reads the ledger at scrape time.
type ledgerCollector struct {
	l                     LedgerReader
	tags, pending, failed *prometheus.Desc

	mu     sync.Mutex
	errors int
}

// Describe implements prometheus.Collector.
func (c *ledgerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.tags
	ch <- c.pending
	ch <- c.failed
}

// Collect implements prometheus.Collector.
func (c *ledgerCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	if counts, err := c.l.Counts(ctx, ""); err != nil {
		c.errors++
	} else {
		byMode := counts.ByMode()
		for _, mode := range []string{policy.Immutable.String(), policy.Mutable.String(), policy.Warn.String(), "deleted"} {
			ch <- prometheus.MustNewConstMetric(c.tags, prometheus.GaugeValue, float64(byMode[mode]), mode)
		}
	}
	if rs, err := c.l.Reservations(ctx); err != nil {
		c.errors++
	} else {
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(len(rs)))
	}
	ch <- prometheus.MustNewConstMetric(c.failed, prometheus.CounterValue, float64(c.errors))
}
