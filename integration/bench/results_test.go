package bench

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// resultsEnv names the file the benchmarks write their medians to, as
// JSON, for scripts/benchchart to draw. scripts/bench.sh sets it to
// bin/bench.json; unset, nothing is written.
const resultsEnv = "TAGLOCK_BENCH_JSON"

// commitEnv is the commit under test, recorded in the results file;
// scripts/bench.sh sets it from git.
const commitEnv = "TAGLOCK_BENCH_COMMIT"

// results is the file resultsEnv names. scripts/benchchart reads the same
// fields; change both together.
type results struct {
	Commit  string   `json:"commit,omitempty"`
	Started string   `json:"started"` // RFC 3339
	Results []result `json:"results"`
}

// result is one run of one benchmark. A benchmark run several times
// (-count) appears once per run.
type result struct {
	Name  string `json:"name"`  // the benchmark, as `go test` names it
	Label string `json:"label"` // the operation, for people
	Unit  string `json:"unit"`  // of Rate: MiB/s or req/s
	// Iterations is how many times each path was measured.
	Iterations int `json:"iterations"`
	// Rate is each path's median rate.
	Rate map[string]float64 `json:"rate,omitempty"`
	// Ratio is, for each path but direct, the median over iterations of
	// its rate divided by the direct rate of the same iteration.
	Ratio map[string]float64 `json:"ratio,omitempty"`
	// VsControl is the same against the control proxy, for taglock and
	// nginx.
	VsControl map[string]float64 `json:"vs_control,omitempty"`
	// CPU is the CPU time of each path's serving process per unit of
	// work: s/GiB for MiB/s, µs/request for req/s. Machine is the same
	// for the whole machine, IdleCPUs how many CPUs stayed idle.
	CPU      map[string]float64 `json:"cpu,omitempty"`
	Machine  map[string]float64 `json:"machine,omitempty"`
	IdleCPUs map[string]float64 `json:"idle_cpus,omitempty"`
	// Metrics holds anything else the benchmark reported, such as
	// taglock's peak RSS ("taglock-rss-peak-MiB").
	Metrics map[string]float64 `json:"metrics,omitempty"`
}

// labels names the operations the benchmarks measure, by benchmark name.
var labels = map[string]string{
	"BenchmarkBlobUpload256MiB":              "blob upload 256 MiB",
	"BenchmarkBlobDownload256MiB":            "blob download 256 MiB",
	"BenchmarkManifestPut/clients=8":         "manifest PUT, new tags, 8 clients",
	"BenchmarkManifestPut/clients=32":        "manifest PUT, new tags, 32 clients",
	"BenchmarkManifestGet/clients=8":         "manifest GET, immutable tag, 8 clients",
	"BenchmarkManifestGet/clients=32":        "manifest GET, immutable tag, 32 clients",
	"BenchmarkManifestHead/clients=8":        "manifest HEAD, immutable tag, 8 clients",
	"BenchmarkManifestHead/clients=32":       "manifest HEAD, immutable tag, 32 clients",
	"BenchmarkManifestGetMutable/clients=32": "manifest GET, mutable tag (latest), 32 clients",
	"BenchmarkMemory1GiB/upstream":           "memory, 1 GiB blob up and down, upstream",
	"BenchmarkMemory1GiB/embedded":           "memory, 1 GiB blob up and down, embedded",
	"BenchmarkMemoryManifestCache":           "memory, manifest cache full",
}

// label is the operation benchmark name measures: its entry in labels, or
// the name without "Benchmark".
func label(name string) string {
	if l := labels[name]; l != "" {
		return l
	}
	return strings.TrimPrefix(name, "Benchmark")
}

// collector gathers the results of a run and rewrites the results file
// after each, so that a run stopped half way still leaves what it
// measured.
type collector struct {
	mu   sync.Mutex
	path string
	all  results
}

// add records r and writes the file, when there is one.
func (c *collector) add(r result) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addLocked(r)
}

// annotate adds metric=value to the latest result of benchmark name and
// writes the file.
func (c *collector) annotate(name, metric string, value float64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.all.Results) - 1; i >= 0; i-- {
		r := &c.all.Results[i]
		if r.Name != name {
			continue
		}
		if r.Metrics == nil {
			r.Metrics = map[string]float64{}
		}
		r.Metrics[metric] = value
		return c.write()
	}
	return c.addLocked(result{Name: name, Label: label(name), Metrics: map[string]float64{metric: value}})
}

func (c *collector) addLocked(r result) error {
	c.all.Results = append(c.all.Results, r)
	return c.write()
}

// write replaces the file with everything collected so far.
func (c *collector) write() error {
	if c.path == "" {
		return nil
	}
	b, err := json.MarshalIndent(c.all, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.path), 0o755); err != nil {
		return err
	}
	tmp := c.path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, c.path)
}
