package server

import (
	"context"
	"maps"
	"net/http"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage/bolt"
)

// TestMetricsNamesAndLabels ensures that after a push, an identical
// re-push, a refused move and a pull, /metrics carries every series the
// README promises, with the documented labels and plausible values:
// requests, refusals, upstream latency, ledger latency, bytes proxied, the
// manifest cache, tags by mode and pending reservations.
func TestMetricsNamesAndLabels(t *testing.T) {
	t.Parallel()
	_, base := mustStart(t, nil)
	if code, _ := push(t, base, "team/app", "1.0", "one"); code != http.StatusCreated {
		t.Fatalf("push: %d", code)
	}
	if code, _ := push(t, base, "team/app", "latest", "one"); code != http.StatusCreated {
		t.Fatalf("push latest: %d", code)
	}
	if code, _ := push(t, base, "team/app", "1.0", "moved"); code != http.StatusForbidden {
		t.Fatalf("moving push: %d, want 403", code)
	}
	for _, tag := range []string{"1.0", "latest"} {
		if resp, _ := do(t, http.MethodGet, base+"/v2/team/app/manifests/"+tag, "", nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("pull %s: %d", tag, resp.StatusCode)
		}
	}
	resp, body := do(t, http.MethodGet, base+"/metrics", "", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	text := string(body)
	tests := []struct {
		series string // a sample line's name and labels, as a regexp
		min    float64
	}{
		{`taglock_requests_total\{code="201",method="PUT",route="manifest"\}`, 2},
		{`taglock_requests_total\{code="403",method="PUT",route="manifest"\}`, 1},
		{`taglock_requests_total\{code="200",method="GET",route="manifest"\}`, 1},
		{`taglock_refusals_total\{reason="immutable-tag-moved"\}`, 1},
		{`taglock_upstream_duration_seconds_count\{method="PUT",op="forward"\}`, 1},
		{`taglock_upstream_duration_seconds_bucket\{method="GET",op="forward",le="\+Inf"\}`, 1},
		{`taglock_upstream_duration_seconds_count\{method="PUT",op="lookup"\}`, 2},
		{`taglock_ledger_duration_seconds_count\{op="reserve"\}`, 2},
		{`taglock_ledger_duration_seconds_count\{op="commit"\}`, 2},
		{`taglock_ledger_duration_seconds_count\{op="binding"\}`, 1},
		{`taglock_ledger_duration_seconds_bucket\{op="append",le="0.0001"\}`, 0},
		{`taglock_proxied_bytes_total\{direction="in"\}`, 3},
		{`taglock_proxied_bytes_total\{direction="out"\}`, 100},
		{`taglock_manifest_cache_total\{result="hit"\}`, 1},
		{`taglock_manifest_cache_total\{result="fill"\}`, 1},
		{`taglock_manifest_cache_total\{result="bypass"\}`, 1},
		{`taglock_manifest_cache_total\{result="confirm"\}`, 0},
		{`taglock_manifest_cache_bytes`, 100},
		{`taglock_tags\{mode="immutable"\}`, 1},
		{`taglock_tags\{mode="mutable"\}`, 1},
		{`taglock_tags\{mode="warn"\}`, 0},
		{`taglock_tags\{mode="deleted"\}`, 0},
		{`taglock_reservations_pending`, 0},
		{`taglock_verify_last_success_timestamp_seconds`, 0},
	}
	for _, tc := range tests {
		t.Run(tc.series, func(t *testing.T) {
			m := regexp.MustCompile(`(?m)^(?:` + tc.series + `) (\S+)$`).FindStringSubmatch(text)
			if m == nil {
				t.Fatalf("no sample %s in /metrics:\n%s", tc.series, grepTaglock(text))
			}
			if v, err := strconv.ParseFloat(m[1], 64); err != nil || v < tc.min {
				t.Errorf("%s = %s, want at least %v", tc.series, m[1], tc.min)
			}
		})
	}
}

func grepTaglock(text string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "taglock_") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestWebPageMounted ensures serve answers the web page at /taglock/ next
// to the JSON API, showing a pushed tag.
func TestWebPageMounted(t *testing.T) {
	t.Parallel()
	_, base := mustStart(t, nil)
	if code, _ := push(t, base, "team/web", "2.1.0", "web"); code != http.StatusCreated {
		t.Fatalf("push: %d", code)
	}
	resp, body := do(t, http.MethodGet, base+"/taglock/repos/team/web", "", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), ">2.1.0</a>") {
		t.Errorf("/taglock/repos/team/web: %d\n%s", resp.StatusCode, body)
	}
	if resp, _ := do(t, http.MethodGet, base+"/taglock/v1/repositories", "", nil); resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("the JSON API moved: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp, body := do(t, http.MethodGet, base+"/taglock/v1/drift", "", nil); resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "{}" {
		t.Errorf("drift without a schedule: %d %s, want {}", resp.StatusCode, body)
	}
}

// TestEveryProxyLedgerMethodIsMetered ensures that each method of
// proxy.Ledger, the ledger operations the proxy performs, is timed into
// taglock_ledger_duration_seconds under an operation of its own: a method
// meteredLedger forgot would reach the embedded ledger untimed.
func TestEveryProxyLedgerMethodIsMetered(t *testing.T) {
	t.Parallel()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	reg := prometheus.NewRegistry()
	var metered proxy.Ledger = meteredLedger{l, proxy.NewMetrics(reg)}
	v, typ := reflect.ValueOf(metered), reflect.TypeFor[proxy.Ledger]()
	for i := range typ.NumMethod() {
		m := typ.Method(i)
		// Every call gets a background context and zero values: the
		// ledger may refuse them; only the timing matters here.
		var args []reflect.Value
		for j := range m.Type.NumIn() {
			in := m.Type.In(j)
			if m.Type.IsVariadic() && j == m.Type.NumIn()-1 {
				break
			}
			if in == reflect.TypeFor[context.Context]() {
				args = append(args, reflect.ValueOf(context.Background()))
			} else {
				args = append(args, reflect.Zero(in))
			}
		}
		v.MethodByName(m.Name).Call(args)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	ops := map[string]bool{}
	for _, f := range families {
		if f.GetName() != "taglock_ledger_duration_seconds" {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, lp := range s.GetLabel() {
				if lp.GetName() == "op" && s.GetHistogram().GetSampleCount() == 1 {
					ops[lp.GetValue()] = true
				}
			}
		}
	}
	if len(ops) != typ.NumMethod() {
		t.Errorf("%d of proxy.Ledger's %d methods were timed once each, under %v", len(ops), typ.NumMethod(), slices.Sorted(maps.Keys(ops)))
	}
}
