//go:build bench

package bench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/integration/internal/proc"
)

// Sizes and counts. They keep `make bench` (every benchmark at 3x) under
// about three minutes on two cores.
const (
	blobSize        = 256 << 20 // the blob transfer benchmarks
	memoryBlobSize  = 1 << 30   // the memory benchmark
	copyBuffer      = 256 << 10 // the client's read buffer for downloads
	manifestClients = 8         // concurrent clients in the manifest benchmarks, the fewer of two
	manifestPuts    = 256       // manifest PUTs per path per iteration, at least
	manifestGets    = 2048      // manifest GETs or HEADs per path per iteration, at least
	manifestTags    = 64        // tags the GET benchmarks read in turn
	mib             = 1 << 20
)

// BenchmarkBlobUpload256MiB measures a 256 MiB blob upload (POST, one
// streamed PATCH, PUT) to the registry directly, through the control proxy,
// through nginx, through taglock in front of it, and to taglock's embedded
// registry,
// interleaved, and reports the throughput of each and taglock's ratio to
// direct.
func BenchmarkBlobUpload256MiB(b *testing.B) {
	s := startStack(b)
	ctx := b.Context()
	body := newPatternReader(1, blobSize)
	d := mustDigest(b, body)
	upload := func(t *target) error {
		body.Reset()
		return t.uploadBlob(ctx, "bench/upload-"+t.name, body, blobSize, d)
	}
	// Untimed: warms connections and leaves the blob in each store, so
	// every timed upload takes the same path in the registry.
	for _, t := range s.targets() {
		if err := upload(t); err != nil {
			b.Fatal(err)
		}
	}
	rec := newRecorder()
	for i := 0; b.Loop(); i++ {
		for _, t := range rotate(s.targets(), i) {
			rec.measure(b, t, func() error { return upload(t) })
		}
	}
	rec.report(b, blobSize/mib, "MiB/s")
}

// BenchmarkBlobDownload256MiB measures a 256 MiB blob download, read to
// io.Discard, from the registry directly, through the control proxy, through
// nginx, through taglock and from the embedded registry, interleaved. An
// untimed first download through each path checks the content's digest.
func BenchmarkBlobDownload256MiB(b *testing.B) {
	s := startStack(b)
	ctx := b.Context()
	body := newPatternReader(2, blobSize)
	d := mustDigest(b, body)
	const repo = "bench/download"
	// The proxies forward to the upstream's blob, so uploading directly
	// puts it behind three paths; the embedded registry gets its own copy.
	for _, t := range []*target{s.direct, s.inproc} {
		body.Reset()
		if err := t.uploadBlob(ctx, repo, body, blobSize, d); err != nil {
			b.Fatal(err)
		}
	}
	buf := make([]byte, copyBuffer)
	for _, t := range s.targets() {
		dg := digest.SHA256.Digester()
		if err := t.downloadBlob(ctx, repo, d, blobSize, dg.Hash(), buf); err != nil {
			b.Fatal(err)
		}
		if dg.Digest() != d {
			b.Fatalf("%s: downloaded %s, want %s", t.name, dg.Digest(), d)
		}
	}
	rec := newRecorder()
	for i := 0; b.Loop(); i++ {
		for _, t := range rotate(s.targets(), i) {
			rec.measure(b, t, func() error { return t.downloadBlob(ctx, repo, d, blobSize, io.Discard, buf) })
		}
	}
	rec.report(b, blobSize/mib, "MiB/s")
}

// BenchmarkMemory1GiB uploads and then downloads a 1 GiB blob through
// taglock, in front of an upstream and with the embedded registry, while it
// samples taglock's resident set size. It reports the growth of the peak
// over the idle RSS and fails if it exceeds 256 MiB: streamed bodies must
// never be buffered whole.
func BenchmarkMemory1GiB(b *testing.B) {
	registry := proc.StartRegistry(b, "warn")
	body := newPatternReader(3, memoryBlobSize)
	d := mustDigest(b, body)
	b.Run("upstream", func(b *testing.B) {
		p := startTaglock(b, "http://"+registry.Addr)
		measureMemory(b, p, body, d)
	})
	b.Run("embedded", func(b *testing.B) {
		p := startTaglock(b, "")
		measureMemory(b, p, body, d)
	})
}

// measureMemory is BenchmarkMemory1GiB against one fresh taglock process p.
func measureMemory(b *testing.B, p *process, body *patternReader, d digest.Digest) {
	ctx := b.Context()
	t := newTarget("taglock", p.Addr)
	const repo = "bench/memory"
	buf := make([]byte, copyBuffer)
	// Untimed warm-up with a small blob: the first request of each kind
	// allocates pools and caches that are not per-transfer growth.
	warm := newPatternReader(4, 16*mib)
	wd := mustDigest(b, warm)
	warm.Reset()
	if err := t.uploadBlob(ctx, repo, warm, 16*mib, wd); err != nil {
		b.Fatal(err)
	}
	if err := t.downloadBlob(ctx, repo, wd, 16*mib, io.Discard, buf); err != nil {
		b.Fatal(err)
	}
	base, _, err := rssKiB(p)
	if err != nil {
		b.Fatal(err)
	}
	sampled, stop := sampleRSS(ctx, p, 10*time.Millisecond)
	var up, down []time.Duration
	for b.Loop() {
		body.Reset()
		start := time.Now()
		if err := t.uploadBlob(ctx, repo, body, memoryBlobSize, d); err != nil {
			b.Fatal(err)
		}
		up = append(up, time.Since(start))
		start = time.Now()
		if err := t.downloadBlob(ctx, repo, d, memoryBlobSize, io.Discard, buf); err != nil {
			b.Fatal(err)
		}
		down = append(down, time.Since(start))
	}
	peak, err := stop()
	if err != nil {
		b.Fatal(err)
	}
	_, hwm, err := rssKiB(p)
	if err != nil {
		b.Fatal(err)
	}
	peak = max(peak, hwm)
	growth := float64(peak-base) / 1024
	b.ReportMetric(0, "ns/op")
	reportMetric(b, float64(base)/1024, "rss-idle-MiB")
	reportMetric(b, float64(peak)/1024, "rss-peak-MiB")
	reportMetric(b, growth, "rss-growth-MiB")
	reportMetric(b, median(rates(up, memoryBlobSize/mib)), "upload-MiB/s")
	reportMetric(b, median(rates(down, memoryBlobSize/mib)), "download-MiB/s")
	b.Logf("%s: %d samples; RSS idle %.0f MiB, peak %.0f MiB (VmHWM %.0f MiB)",
		p.Name, sampled(), float64(base)/1024, float64(peak)/1024, float64(hwm)/1024)
	if growth > 256 {
		b.Fatalf("%s: RSS grew by %.0f MiB while a 1 GiB blob passed through; want it flat (under 256 MiB)", p.Name, growth)
	}
}

// sampleRSS reads p's VmRSS every interval until stop is called; stop
// returns the largest value seen, in KiB, or the first read error. samples
// reports how many reads were made.
func sampleRSS(ctx context.Context, p *process, interval time.Duration) (samples func() int, stop func() (int64, error)) {
	var (
		mu    sync.Mutex
		peak  int64
		n     int
		first error
	)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			rss, _, err := rssKiB(p)
			mu.Lock()
			if err != nil && first == nil {
				first = err
			}
			peak = max(peak, rss)
			n++
			mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	samples = func() int { mu.Lock(); defer mu.Unlock(); return n }
	stop = func() (int64, error) {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return peak, first
	}
	return samples, stop
}

// recorder collects, per path, the wall time of each iteration, the CPU
// time its serving process used, and how busy and idle the whole machine
// was meanwhile.
type recorder struct {
	wall map[string][]time.Duration
	cpu  map[string]time.Duration
	busy map[string]time.Duration
	idle map[string]time.Duration
}

func newRecorder() *recorder {
	return &recorder{wall: map[string][]time.Duration{}, cpu: map[string]time.Duration{},
		busy: map[string]time.Duration{}, idle: map[string]time.Duration{}}
}

// measure runs fn, one iteration over target t, and records how long it
// took and how much CPU t's taglock process used meanwhile.
func (r *recorder) measure(b *testing.B, t *target, fn func() error) {
	b.Helper()
	var cpu0 time.Duration
	if t.proc != nil {
		var err error
		if cpu0, err = cpuTime(t.proc); err != nil {
			b.Fatal(err)
		}
	}
	busy0, idle0, err := machineTime()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := fn(); err != nil {
		b.Fatal(err)
	}
	r.wall[t.name] = append(r.wall[t.name], time.Since(start))
	busy1, idle1, err := machineTime()
	if err != nil {
		b.Fatal(err)
	}
	r.busy[t.name] += busy1 - busy0
	r.idle[t.name] += idle1 - idle0
	if t.proc != nil {
		cpu1, err := cpuTime(t.proc)
		if err != nil {
			b.Fatal(err)
		}
		r.cpu[t.name] += cpu1 - cpu0
	}
}

// rates returns amount per second for each duration.
func rates(ds []time.Duration, amount float64) []float64 {
	r := make([]float64, len(ds))
	for i, d := range ds {
		r[i] = amount / d.Seconds()
	}
	return r
}

// paths are the targets' names, in report order.
var paths = []string{"direct", "control", "nginx", "taglock", "embedded"}

// report reports, for amount (MiB or requests) per iteration in unit
// (MiB/s or req/s):
//   - "<path>-<unit>": the median rate of each path;
//   - "ratio": the median over iterations of taglock's rate divided by the
//     direct rate measured next to it, and "control-ratio" and
//     "nginx-ratio" the same for the control proxy and nginx;
//   - "<path>-cpu-s/GiB" or "<path>-cpu-us/req": the CPU time of the
//     process serving the path (for direct, the registry; for control,
//     nginx (master and worker) and taglock, the proxy alone) per GiB or per
//     request, all iterations
//     together. It varies far less than throughput on a busy machine.
//   - "<path>-machine-s/GiB" or "<path>-machine-us/req": the same for the
//     whole machine, every process and the kernel's packet processing
//     included, and "<path>-idle-cpus": how many CPUs stayed idle on
//     average while the path ran. A path that leaves no CPU idle is bound
//     by the machine's CPU, and its rate cannot exceed the CPU count divided
//     by its machine-s/GiB.
//
// It suppresses ns/op, which would only time all the paths together.
func (r *recorder) report(b *testing.B, amount float64, unit string) {
	b.Helper()
	direct := rates(r.wall["direct"], amount)
	ratio := func(path string) []float64 {
		rs := rates(r.wall[path], amount)
		for i := range rs {
			rs[i] /= direct[i]
		}
		return rs
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(ratio("taglock")), "ratio")
	b.ReportMetric(median(ratio("control")), "control-ratio")
	b.ReportMetric(median(ratio("nginx")), "nginx-ratio")
	line := []string{"taglock/direct " + format(ratio("taglock"), "%.3f"), "control/direct " + format(ratio("control"), "%.3f"),
		"nginx/direct " + format(ratio("nginx"), "%.3f")}
	for _, path := range paths {
		rs := rates(r.wall[path], amount)
		b.ReportMetric(median(rs), path+"-"+unit)
		line = append(line, path+" "+format(rs, "%.0f"))
		total := amount * float64(len(r.wall[path]))
		if unit == "MiB/s" {
			b.ReportMetric(r.cpu[path].Seconds()/(total/1024), path+"-cpu-s/GiB")
			b.ReportMetric(r.busy[path].Seconds()/(total/1024), path+"-machine-s/GiB")
		} else {
			b.ReportMetric(float64(r.cpu[path].Microseconds())/total, path+"-cpu-us/req")
			b.ReportMetric(float64(r.busy[path].Microseconds())/total, path+"-machine-us/req")
		}
		var wall time.Duration
		for _, d := range r.wall[path] {
			wall += d
		}
		b.ReportMetric(r.idle[path].Seconds()/wall.Seconds(), path+"-idle-cpus")
	}
	b.Logf("per iteration (%s): %s", unit, strings.Join(line, "; "))
	r.collect(b, amount, unit)
}

func format(xs []float64, verb string) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf(verb, x)
	}
	return strings.Join(s, " ")
}

// rotate returns ts starting at element i mod len(ts), so that no path
// always goes first (or last) in an iteration.
func rotate(ts []*target, i int) []*target {
	i %= len(ts)
	return append(ts[i:len(ts):len(ts)], ts[:i]...)
}

// mustDigest returns the digest of r's content and rewinds it.
func mustDigest(b testing.TB, r *patternReader) digest.Digest {
	b.Helper()
	r.Reset()
	d, err := blobDigest(r)
	if err != nil {
		b.Fatal(err)
	}
	r.Reset()
	return d
}
