package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestCollector ensures every result is in the results file as soon as it
// is added, that a metric reported afterwards joins the latest result of
// its benchmark (or makes one of its own), and that without a path
// nothing is written.
func TestCollector(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sub", "bench.json")
	c := &collector{path: path, all: results{Commit: "abc1234", Started: "2026-11-27T10:00:00Z"}}
	read := func() results {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var r results
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	get := result{Name: "BenchmarkManifestGet/clients=32", Label: label("BenchmarkManifestGet/clients=32"), Unit: "req/s",
		Iterations: 3, Rate: map[string]float64{"direct": 4000, "taglock": 8000}, Ratio: map[string]float64{"taglock": 2}}
	if err := c.add(get); err != nil {
		t.Fatal(err)
	}
	if r := read(); len(r.Results) != 1 || r.Commit != "abc1234" || r.Results[0].Ratio["taglock"] != 2 ||
		r.Results[0].Label != "manifest GET, immutable tag, 32 clients" {
		t.Fatalf("after add: %+v", r)
	}
	if err := c.add(result{Name: "BenchmarkManifestPut/clients=8"}); err != nil {
		t.Fatal(err)
	}
	if err := c.annotate(get.Name, "taglock-rss-peak-MiB", 41.5); err != nil {
		t.Fatal(err)
	}
	if err := c.annotate("BenchmarkMemoryManifestCache", "rss-peak-MiB", 80); err != nil {
		t.Fatal(err)
	}
	r := read()
	if len(r.Results) != 3 {
		t.Fatalf("%d results, want 3: %+v", len(r.Results), r.Results)
	}
	if got := r.Results[0].Metrics["taglock-rss-peak-MiB"]; got != 41.5 {
		t.Errorf("annotated metric = %v, want 41.5 on %s", got, get.Name)
	}
	if r.Results[1].Metrics != nil {
		t.Errorf("the other benchmark got metrics %v", r.Results[1].Metrics)
	}
	if m := r.Results[2]; m.Name != "BenchmarkMemoryManifestCache" || m.Metrics["rss-peak-MiB"] != 80 || m.Label != "memory, manifest cache full" {
		t.Errorf("metric of a benchmark without a result: %+v", m)
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary file left behind: %v", err)
	}

	none := &collector{}
	if err := none.add(get); err != nil {
		t.Errorf("add without a path: %v", err)
	}
}

// TestLabel ensures known benchmarks get their operation's name and others
// their own.
func TestLabel(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]string{
		"BenchmarkBlobDownload256MiB":            "blob download 256 MiB",
		"BenchmarkManifestHead/clients=8":        "manifest HEAD, immutable tag, 8 clients",
		"BenchmarkManifestGetMutable/clients=32": "manifest GET, mutable tag (latest), 32 clients",
		"BenchmarkSomethingNew/x=1":              "SomethingNew/x=1",
	} {
		if got := label(name); got != want {
			t.Errorf("label(%s) = %q, want %q", name, got, want)
		}
	}
}

// TestQuotients ensures per-iteration ratios pair each iteration with
// itself.
func TestQuotients(t *testing.T) {
	t.Parallel()
	got := quotients([]float64{10, 30, 5}, []float64{5, 10, 10})
	want := []float64{2, 3, 0.5}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("quotients = %v, want %v", got, want)
		}
	}
}
