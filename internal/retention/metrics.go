package retention

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are retention's Prometheus collectors.
type Metrics struct {
	tagsDeleted      prometheus.Counter
	manifestsDeleted prometheus.Counter
	tagsKept         prometheus.Gauge
	bytesFreed       prometheus.Counter
	failed           prometheus.Counter
	gcDeferred       prometheus.Counter
	lastRun          prometheus.Gauge
	lastSuccess      prometheus.Gauge
}

// NewMetrics registers retention's collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		tagsDeleted: prometheus.NewCounter(prometheus.CounterOpts{Name: "taglock_retention_tags_deleted_total",
			Help: "Tags retention deleted."}),
		manifestsDeleted: prometheus.NewCounter(prometheus.CounterOpts{Name: "taglock_retention_manifests_deleted_total",
			Help: "Manifests retention deleted by digest."}),
		tagsKept: prometheus.NewGauge(prometheus.GaugeOpts{Name: "taglock_retention_tags_kept",
			Help: "Tags the last retention plan kept."}),
		bytesFreed: prometheus.NewCounter(prometheus.CounterOpts{Name: "taglock_retention_bytes_freed_total",
			Help: "Bytes retention freed: measured by garbage collection in embedded mode, estimated from the plan otherwise."}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{Name: "taglock_retention_deletions_failed_total",
			Help: "Deletions that failed; the next run tries them again."}),
		gcDeferred: prometheus.NewCounter(prometheus.CounterOpts{Name: "taglock_retention_gc_deferred_total",
			Help: "Garbage collections skipped because writes were still in flight when they had to start; the next run collects."}),
		lastRun: prometheus.NewGauge(prometheus.GaugeOpts{Name: "taglock_retention_last_run_timestamp_seconds",
			Help: "When the last retention run started (Unix time)."}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "taglock_retention_last_run_success",
			Help: "1 when the last retention run finished with every deletion done, 0 otherwise."}),
	}
	reg.MustRegister(m.tagsDeleted, m.manifestsDeleted, m.tagsKept, m.bytesFreed, m.failed, m.gcDeferred, m.lastRun, m.lastSuccess)
	return m
}

// observe records one run.
func (m *Metrics) observe(start time.Time, res Result, err error) {
	if m == nil {
		return
	}
	m.lastRun.Set(float64(start.Unix()))
	for _, d := range res.Deletions {
		switch {
		case d.Outcome == OutcomeFailed:
			m.failed.Inc()
		case d.Outcome != OutcomeDeleted:
		case d.Tag != "":
			m.tagsDeleted.Inc()
		default:
			m.manifestsDeleted.Inc()
		}
	}
	if !res.Report.Time.IsZero() {
		m.tagsKept.Set(float64(res.Report.Totals.TagsKept))
	}
	if res.GC != nil && res.GC.Deferred {
		m.gcDeferred.Inc()
	}
	switch {
	case res.GC != nil:
		m.bytesFreed.Add(float64(res.GC.BytesFreed))
	case err == nil:
		m.bytesFreed.Add(float64(res.Report.Totals.BytesFreed))
	}
	if err == nil && res.Failed == 0 {
		m.lastSuccess.Set(1)
	} else {
		m.lastSuccess.Set(0)
	}
}
