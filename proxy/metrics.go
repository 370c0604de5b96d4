package proxy

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the proxy's Prometheus collectors.
type Metrics struct {
	requests *prometheus.CounterVec
	refusals *prometheus.CounterVec
	warnings *prometheus.CounterVec
}

// NewMetrics registers the proxy's collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taglock_requests_total", Help: "Requests by route, method and status.",
		}, []string{"route", "method", "code"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taglock_refusals_total", Help: "Requests refused by policy, by reason.",
		}, []string{"reason"}),
		warnings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taglock_warn_total", Help: "Requests warn mode let through that immutable mode would have refused, by reason.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.requests, m.refusals, m.warnings)
	return m
}

func (m *Metrics) request(route, method string, code int) {
	if route == "" {
		route = "invalid"
	}
	m.requests.WithLabelValues(route, method, strconv.Itoa(code)).Inc()
}

func (m *Metrics) refused(reason string) { m.refusals.WithLabelValues(reason).Inc() }
func (m *Metrics) warned(reason string)  { m.warnings.WithLabelValues(reason).Inc() }
