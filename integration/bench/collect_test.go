//go:build bench

package bench

import (
	"os"
	"testing"
	"time"
)

// run collects this run's results into the file resultsEnv names.
var run = &collector{path: os.Getenv(resultsEnv), all: results{
	Commit:  os.Getenv(commitEnv),
	Started: time.Now().UTC().Format(time.RFC3339),
}}

// collect records what report reported, for amount (MiB or requests) per
// iteration in unit, in the results file.
func (r *recorder) collect(b *testing.B, amount float64, unit string) {
	b.Helper()
	res := result{Name: b.Name(), Label: label(b.Name()), Unit: unit, Iterations: len(r.wall["direct"]),
		Rate: map[string]float64{}, Ratio: map[string]float64{}, VsControl: map[string]float64{},
		CPU: map[string]float64{}, Machine: map[string]float64{}, IdleCPUs: map[string]float64{}}
	// CPU figures are in s/GiB for MiB/s, in µs/request for req/s.
	per, scale := 1024.0, 1.0
	if unit != "MiB/s" {
		per, scale = 1, 1e6
	}
	for _, path := range paths {
		res.Rate[path] = median(rates(r.wall[path], amount))
		if path != "direct" {
			res.Ratio[path] = median(quotients(rates(r.wall[path], amount), rates(r.wall["direct"], amount)))
		}
		total := amount * float64(len(r.wall[path])) / per
		res.CPU[path] = r.cpu[path].Seconds() * scale / total
		res.Machine[path] = r.busy[path].Seconds() * scale / total
		var wall time.Duration
		for _, d := range r.wall[path] {
			wall += d
		}
		res.IdleCPUs[path] = r.idle[path].Seconds() / wall.Seconds()
	}
	for _, path := range []string{"taglock", "nginx"} {
		res.VsControl[path] = median(quotients(rates(r.wall[path], amount), rates(r.wall["control"], amount)))
	}
	b.ReportMetric(res.VsControl["taglock"], "taglock/control-ratio")
	if err := run.add(res); err != nil {
		b.Fatal(err)
	}
}

// reportMetric reports a metric of the benchmark and records it with its
// result in the results file.
func reportMetric(b *testing.B, v float64, unit string) {
	b.Helper()
	b.ReportMetric(v, unit)
	if err := run.annotate(b.Name(), unit, v); err != nil {
		b.Fatal(err)
	}
}
