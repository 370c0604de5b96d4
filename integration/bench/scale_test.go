//go:build bench

package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/taglock/taglock/integration/internal/proc"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
	"github.com/taglock/taglock/storage/etcd"
	"github.com/taglock/taglock/storage/etcd/etcdtest"
)

// The size of the generated ledgers. TAGLOCK_SCALE_BINDINGS and
// TAGLOCK_SCALE_REPOS change the bolt one; the etcd one is a tenth, which
// keeps it within the embedded etcd's default 2 GiB quota.
const (
	scaleBindings     = 1_000_000
	scaleRepos        = 10_000
	scaleEtcdBindings = 100_000
	scaleEtcdRepos    = 1_000
	scaleLookups      = 200_000
)

// envInt reads a positive integer from the environment, or def.
func envInt(b testing.TB, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// scaleDir is where a benchmark keeps its generated ledger: a temporary
// directory, or, when TAGLOCK_SCALE_DIR is set, a directory of it named
// after the benchmark that stays, so that later runs skip the generation
// and the import.
func scaleDir(b *testing.B) (dir string, kept bool) {
	b.Helper()
	root := os.Getenv("TAGLOCK_SCALE_DIR")
	if root == "" {
		return b.TempDir(), false
	}
	dir = filepath.Join(root, b.Name())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	return dir, true
}

// generate writes the ledger of spec to dir/ledger.jsonl and reports how
// long it took.
func generate(b *testing.B, spec scaleSpec, dir string) (string, scaleStats) {
	b.Helper()
	path := filepath.Join(dir, "ledger.jsonl")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	stats, err := writeScaleLedger(f, spec, dir)
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		b.Fatal(err)
	}
	fi, _ := os.Stat(path)
	b.Logf("generated %d repositories, %d bindings (%d immutable, %d mutable, %d warn, %d tombstones), %d manifests, %d pulls, %d events in %s: %.0f MiB of JSON lines; biggest repository %s with %d tags",
		stats.Repos, stats.Bindings, stats.Immutable, stats.Mutable, stats.Warn, stats.Delete, stats.Manifests, stats.Pulls, stats.Events,
		time.Since(start).Round(time.Millisecond), float64(fi.Size())/mib, stats.Biggest, stats.Tags)
	return path, stats
}

// command runs taglock with args, its standard output to out, and returns
// the wall time and the peak RSS in KiB.
func command(b *testing.B, bin string, out io.Writer, args ...string) (time.Duration, int64) {
	b.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = proc.Environ()
	cmd.Stdout = out
	errOut := &limitedBuffer{max: 64 << 10}
	cmd.Stderr = errOut
	start := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("taglock %v: %v\n%s", args, err, errOut.String())
	}
	took := time.Since(start)
	var maxRSS int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		maxRSS = ru.Maxrss // KiB on Linux
	}
	return took, maxRSS
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	max int
	buf []byte
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - len(l.buf); room > 0 {
		l.buf = append(l.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.buf) }

// timedGet GETs url and returns how long the whole answer took and its
// size; anything but 200 fails the benchmark.
func timedGet(b *testing.B, client *http.Client, url string) (time.Duration, int64) {
	b.Helper()
	start := time.Now()
	resp, err := client.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return took, n
}

// BenchmarkLedgerAtScale generates a ledger of 1,000,000 bindings over
// 10,000 repositories (see writeScaleLedger) and measures, on the bolt
// backend: `taglock ledger import` and `export` of it, `ledger check`, the
// file's size; then, each iteration, `taglock serve` on it: the time to its
// "listening" line and to /readyz, its RSS, /metrics scrapes, the web page
// and the JSON API; and last Binding lookups on the ledger opened in
// process. Run it alone: make bench BENCH=LedgerAtScale BENCHTIME=3x.
func BenchmarkLedgerAtScale(b *testing.B) {
	bin := proc.Tool(b, "TAGLOCK_BIN")
	spec := scaleSpec{Repos: envInt(b, "TAGLOCK_SCALE_REPOS", scaleRepos), Bindings: envInt(b, "TAGLOCK_SCALE_BINDINGS", scaleBindings), Seed: 1}
	dir, kept := scaleDir(b)
	data := filepath.Join(dir, "data")
	cfg := filepath.Join(dir, "taglock.yaml")
	if err := os.WriteFile(cfg, []byte("log: {level: warn}\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	// b.Loop drops what was reported before it: keep it until the end.
	once := map[string]float64{}
	var stats scaleStats
	if _, err := os.Stat(filepath.Join(data, "ledger.db")); kept && err == nil {
		// A kept ledger: its stats are generated again, cheaply, into
		// the void.
		stats, err = writeScaleLedger(io.Discard, spec, dir)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("reusing the ledger in %s", data)
	} else {
		var gen string
		gen, stats = generate(b, spec, dir)
		took, importRSS := command(b, bin, io.Discard, "ledger", "import", "--config", cfg, "--data", data, gen)
		once["import-bindings/s"] = float64(stats.Bindings) / took.Seconds()
		once["import-records/s"] = float64(stats.Records()) / took.Seconds()
		once["import-peak-rss-MiB"] = float64(importRSS) / 1024
		b.Logf("ledger import: %s, peak RSS %d MiB", took.Round(time.Millisecond), importRSS/1024)
		if err := os.Remove(gen); err != nil {
			b.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(data, "ledger.db"))
	if err != nil {
		b.Fatal(err)
	}
	once["ledger-file-MiB"] = float64(fi.Size()) / mib
	took, exportRSS := command(b, bin, io.Discard, "ledger", "export", "--config", cfg, "--data", data)
	once["export-bindings/s"] = float64(stats.Bindings) / took.Seconds()
	once["export-records/s"] = float64(stats.Records()) / took.Seconds()
	b.Logf("ledger export: %s, peak RSS %d MiB", took.Round(time.Millisecond), exportRSS/1024)
	if os.Getenv("TAGLOCK_SCALE_CHECK") != "" { // minutes: only when asked
		took, _ = command(b, bin, io.Discard, "ledger", "check", "--config", cfg, "--data", data)
		once["check-s"] = took.Seconds()
	}
	once["serve-upgrade-ready-s"] = upgradeStart(b, bin, cfg, data)

	repoPath := url.PathEscape(stats.Biggest)
	pages := []struct{ name, path string }{
		{"metrics", "/metrics"},
		{"web-index", "/taglock/"},
		{"web-repo", "/taglock/repos/" + stats.Biggest},
		{"api-repositories", "/taglock/v1/repositories"},
		{"api-tags", "/taglock/v1/repositories/" + stats.Biggest + "/tags"},
		{"api-history", "/taglock/v1/history?repo=" + repoPath},
	}
	client := &http.Client{Timeout: 10 * time.Minute}
	var listened, ready, rssIdle, rssPeak, scrapeFirst, scrapeRest []float64
	pageTimes := map[string][]float64{}
	pageSizes := map[string]int64{}
	for b.Loop() {
		p := proc.Start(b, proc.Spec{Name: "taglock", Bin: bin, Env: proc.Environ(),
			Args:     []string{"serve", "--config", cfg, "--listen", "127.0.0.1:0", "--data", data},
			AddrFrom: proc.TaglockAddr, Ready: "/readyz"})
		listened = append(listened, p.Listened.Sub(p.Started).Seconds())
		ready = append(ready, p.Ready.Sub(p.Started).Seconds())
		rss, _, err := rssKiB(p)
		if err != nil {
			b.Fatal(err)
		}
		rssIdle = append(rssIdle, float64(rss)/1024)
		base := "http://" + p.Addr
		for i := range 5 {
			d, _ := timedGet(b, client, base+"/metrics")
			if i == 0 {
				scrapeFirst = append(scrapeFirst, d.Seconds()*1000)
			} else {
				scrapeRest = append(scrapeRest, d.Seconds()*1000)
			}
		}
		for _, pg := range pages[1:] {
			d, n := timedGet(b, client, base+pg.path)
			pageTimes[pg.name] = append(pageTimes[pg.name], d.Seconds()*1000)
			pageSizes[pg.name] = n
		}
		_, hwm, err := rssKiB(p)
		if err != nil {
			b.Fatal(err)
		}
		rssPeak = append(rssPeak, float64(hwm)/1024)
		p.Stop(b)
	}
	b.ReportMetric(0, "ns/op")
	for name, v := range once {
		b.ReportMetric(v, name)
	}
	b.ReportMetric(median(listened), "serve-listening-s")
	b.ReportMetric(median(ready), "serve-ready-s")
	b.ReportMetric(median(rssIdle), "serve-rss-MiB")
	b.ReportMetric(median(rssPeak), "serve-peak-rss-MiB")
	b.ReportMetric(median(scrapeFirst), "metrics-first-ms")
	b.ReportMetric(median(scrapeRest), "metrics-ms")
	for _, pg := range pages[1:] {
		b.ReportMetric(median(pageTimes[pg.name]), pg.name+"-ms")
		b.ReportMetric(float64(pageSizes[pg.name])/1024, pg.name+"-KiB")
	}

	l, err := bolt.Open(filepath.Join(data, "ledger.db"), bolt.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	p50, p99, worst := lookups(b, l, stats)
	b.ReportMetric(p50, "lookup-p50-us")
	b.ReportMetric(p99, "lookup-p99-us")
	b.ReportMetric(worst, "lookup-max-us")
	reportCounts(b, l, stats)
}

// upgradeStart makes the ledger look written by a taglock that kept no
// counts (it removes the mark of the last transaction that kept them), and
// returns how long `taglock serve` then takes to answer /readyz: the first
// start after an upgrade, which counts every binding once.
func upgradeStart(b *testing.B, bin, cfg, data string) float64 {
	b.Helper()
	db, err := bbolt.Open(filepath.Join(data, "ledger.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		if stats := tx.Bucket([]byte("stats")); stats != nil {
			return stats.Delete([]byte("txid"))
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		b.Fatal(err)
	}
	p := proc.Start(b, proc.Spec{Name: "taglock (upgrade)", Bin: bin, Env: proc.Environ(),
		Args:     []string{"serve", "--config", cfg, "--listen", "127.0.0.1:0", "--data", data},
		AddrFrom: proc.TaglockAddr, Ready: "/readyz"})
	p.Stop(b)
	b.Logf("first start after an upgrade: listening after %s, ready after %s",
		p.Listened.Sub(p.Started).Round(time.Millisecond), p.Ready.Sub(p.Started).Round(time.Millisecond))
	return p.Ready.Sub(p.Started).Seconds()
}

// reportCounts reports how long counting the whole ledger takes with
// Counts, and by the walk the metrics collector made before it (every
// repository's bindings read), and checks they agree.
func reportCounts(b *testing.B, l storage.Ledger, stats scaleStats) {
	b.Helper()
	ctx := context.Background()
	start := time.Now()
	counts, err := l.Counts(ctx, "")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(time.Since(start).Microseconds()), "counts-us")
	if counts.Tags() != int64(stats.Bindings) || counts.Repositories != int64(stats.Repos) || counts.Deleted != int64(stats.Delete) {
		b.Errorf("Counts = %+v, the generator wrote %+v", counts, stats)
	}
	if os.Getenv("TAGLOCK_SCALE_WALK") == "" { // minutes: only when asked
		return
	}
	start = time.Now()
	repos, err := l.Repositories(ctx)
	if err != nil {
		b.Fatal(err)
	}
	var walked int
	for _, repo := range repos {
		bs, err := l.Bindings(ctx, repo)
		if err != nil {
			b.Fatal(err)
		}
		walked += len(bs)
	}
	b.ReportMetric(time.Since(start).Seconds(), "walk-s")
	if walked != stats.Bindings {
		b.Errorf("the walk found %d bindings, want %d", walked, stats.Bindings)
	}
}

// bindingReader is the one method lookups time.
type bindingReader interface {
	Binding(ctx context.Context, repo, tag string) (storage.Binding, error)
}

// lookups times scaleLookups Binding calls of sampled tags, one in ten of
// a tag the ledger lacks, in a random order, and returns the p50, p99 and
// worst in microseconds.
func lookups(b *testing.B, l bindingReader, stats scaleStats) (p50, p99, worst float64) {
	b.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 7))
	times := make([]time.Duration, 0, scaleLookups)
	for i := range scaleLookups {
		ref := stats.Sample[rng.IntN(len(stats.Sample))]
		tag := ref[1]
		if i%10 == 9 {
			tag = "missing-" + strconv.Itoa(i)
		}
		start := time.Now()
		_, err := l.Binding(ctx, ref[0], tag)
		times = append(times, time.Since(start))
		if err != nil && i%10 != 9 {
			b.Fatalf("Binding(%s, %s): %v", ref[0], tag, err)
		}
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	return us(percentile(times, 0.50)), us(percentile(times, 0.99)), us(percentile(times, 1))
}

// BenchmarkLedgerAtScaleEtcd generates a ledger of 100,000 bindings over
// 1,000 repositories and measures, on the etcd backend with one embedded
// member: Import and Export in process, and Binding lookups.
func BenchmarkLedgerAtScaleEtcd(b *testing.B) {
	spec := scaleSpec{Repos: envInt(b, "TAGLOCK_SCALE_ETCD_REPOS", scaleEtcdRepos), Bindings: envInt(b, "TAGLOCK_SCALE_ETCD_BINDINGS", scaleEtcdBindings), Seed: 1}
	dir := b.TempDir()
	gen, stats := generate(b, spec, dir)
	cluster := etcdtest.Start(b, 1)
	ctx := context.Background()
	l, err := etcd.Open(ctx, etcd.Options{Endpoints: cluster.Endpoints(), RequestTimeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	f, err := os.Open(gen)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	if _, err := l.Import(ctx, f, storage.ImportOptions{}); err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)
	b.Logf("Import: %s", took.Round(time.Millisecond))
	var exportTimes, p50s, p99s, worsts []float64
	for b.Loop() {
		start := time.Now()
		if err := l.Export(ctx, io.Discard); err != nil {
			b.Fatal(err)
		}
		exportTimes = append(exportTimes, time.Since(start).Seconds())
		p50, p99, worst := lookups(b, l, stats)
		p50s, p99s, worsts = append(p50s, p50), append(p99s, p99), append(worsts, worst)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(stats.Bindings)/took.Seconds(), "import-bindings/s")
	b.ReportMetric(float64(stats.Records())/took.Seconds(), "import-records/s")
	b.ReportMetric(float64(stats.Bindings)/median(exportTimes), "export-bindings/s")
	b.ReportMetric(median(p50s), "lookup-p50-us")
	b.ReportMetric(median(p99s), "lookup-p99-us")
	b.ReportMetric(median(worsts), "lookup-max-us")
	start = time.Now()
	reportCounts(b, l, stats)
	b.Logf("counts and walk: %s", time.Since(start).Round(time.Millisecond))
	serveOnEtcd(b, cluster.Endpoints(), stats)
}

// serveOnEtcd starts `taglock serve` on the etcd ledger and reports how
// long it takes to answer /readyz, a /metrics scrape (the first, and the
// median of the next four), the front page and the largest repository's
// tags from the API.
func serveOnEtcd(b *testing.B, endpoints []string, stats scaleStats) {
	b.Helper()
	bin := proc.Tool(b, "TAGLOCK_BIN")
	dir := b.TempDir()
	cfg := filepath.Join(dir, "taglock.yaml")
	yaml := fmt.Sprintf("log: {level: warn}\nledger: {backend: etcd, endpoints: [%s], request_timeout: 60s}\n", strings.Join(endpoints, ", "))
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		b.Fatal(err)
	}
	p := proc.Start(b, proc.Spec{Name: "taglock (etcd)", Bin: bin, Env: proc.Environ(),
		Args:     []string{"serve", "--config", cfg, "--listen", "127.0.0.1:0", "--data", filepath.Join(dir, "data")},
		AddrFrom: proc.TaglockAddr, Ready: "/readyz"})
	defer p.Stop(b)
	b.ReportMetric(p.Ready.Sub(p.Started).Seconds(), "serve-ready-s")
	client := &http.Client{Timeout: 10 * time.Minute}
	base := "http://" + p.Addr
	var rest []float64
	for i := range 5 {
		d, _ := timedGet(b, client, base+"/metrics")
		if i == 0 {
			b.ReportMetric(d.Seconds()*1000, "metrics-first-ms")
		} else {
			rest = append(rest, d.Seconds()*1000)
		}
	}
	b.ReportMetric(median(rest), "metrics-ms")
	for _, pg := range []struct{ name, path string }{
		{"web-index", "/taglock/"},
		{"api-tags", "/taglock/v1/repositories/" + stats.Biggest + "/tags"},
	} {
		d, n := timedGet(b, client, base+pg.path)
		b.ReportMetric(d.Seconds()*1000, pg.name+"-ms")
		b.ReportMetric(float64(n)/1024, pg.name+"-KiB")
	}
}
