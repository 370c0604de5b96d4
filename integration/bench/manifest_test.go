//go:build bench

package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/integration/internal/proc"
)

// Requests per client, per path and iteration, in the manifest
// benchmarks; an iteration sends at least manifestPuts or manifestGets.
const (
	manifestPutsPerClient = 32  // PUTs of new tags
	manifestGetsPerClient = 128 // GETs or HEADs
)

// clientCounts are the concurrent clients the manifest benchmarks run
// with: 8 as before the manifest cache, and 32, where the cache's answers
// and the proxies' costs show most.
var clientCounts = []int{manifestClients, 32}

// perClients runs bench once per client count, as sub-benchmarks named
// clients=N.
func perClients(b *testing.B, counts []int, bench func(b *testing.B, clients int)) {
	for _, n := range counts {
		b.Run("clients="+strconv.Itoa(n), func(b *testing.B) { bench(b, n) })
	}
}

// BenchmarkManifestPut measures pushing distinct small image manifests to
// new (immutable) tags from 8 and from 32 concurrent clients, directly,
// through the control proxy, nginx and taglock, and to the embedded
// registry, and reports requests per second and taglock's peak RSS.
func BenchmarkManifestPut(b *testing.B) {
	perClients(b, clientCounts, benchManifestPut)
}

func benchManifestPut(b *testing.B, clients int) {
	s := startStack(b)
	ctx := b.Context()
	im := newImage()
	n := max(manifestPuts, clients*manifestPutsPerClient)
	repo := func(t *target) string { return "bench/put-" + t.name }
	bodies := func(t *target, round string, n int) [][]byte {
		bs := make([][]byte, n)
		for k := range bs {
			bs[k] = im.manifest(fmt.Sprintf("%s-%s-%d", t.name, round, k))
		}
		return bs
	}
	put := func(t *target, round string, bodies [][]byte) error {
		return concurrently(len(bodies), clients, func(k int) error {
			return t.putManifest(ctx, repo(t), fmt.Sprintf("%s-%d", round, k), bodies[k])
		})
	}
	for _, t := range s.targets() {
		if err := im.push(ctx, t, repo(t)); err != nil {
			b.Fatal(err)
		}
		if err := put(t, "warm", bodies(t, "warm", 2*clients)); err != nil {
			b.Fatal(err)
		}
	}
	rec := newRecorder()
	for i := 0; b.Loop(); i++ {
		for _, t := range rotate(s.targets(), i) {
			round := fmt.Sprint("r", i)
			bs := bodies(t, round, n)
			rec.measure(b, t, func() error { return put(t, round, bs) })
		}
	}
	rec.report(b, float64(n), "req/s")
	reportPeakRSS(b, s.taglock)
	reportPushLatencies(b, s.proxied)
}

// reportPushLatencies reports, from taglock's own metrics, the mean time
// of what a push to a new tag waits for, in ms: the ledger's reservation
// and commit (each a durable write, shared by concurrent pushes), the
// lookup of the tag on the upstream (adoption), and the forwarded PUT until
// the upstream's response headers. Warm-up pushes are included.
func reportPushLatencies(b *testing.B, t *target) {
	b.Helper()
	resp, err := t.do(b.Context(), http.MethodGet, "/metrics", nil, 0, nil, http.StatusOK)
	if err != nil {
		b.Fatal(err)
	}
	text, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range []struct {
		metric, unit string
		labels       []string
	}{
		{"taglock_ledger_duration_seconds", "taglock-reserve-ms", []string{`op="reserve"`}},
		{"taglock_ledger_duration_seconds", "taglock-commit-ms", []string{`op="commit"`}},
		{"taglock_upstream_duration_seconds", "taglock-lookup-ms", []string{`op="lookup"`, `method="GET"`}},
		{"taglock_upstream_duration_seconds", "taglock-forward-put-ms", []string{`op="forward"`, `method="PUT"`}},
	} {
		mean, ok := histogramMean(string(text), m.metric, m.labels...)
		if !ok {
			b.Fatalf("taglock's /metrics has no %s{%s}", m.metric, strings.Join(m.labels, ","))
		}
		reportMetric(b, mean*1000, m.unit)
	}
}

// BenchmarkManifestGet measures GET of image manifests by immutable tag
// (64 tags in turn) from 8 and from 32 concurrent clients, with the Accept
// list containerd sends. taglock answers these from its ledger and its
// manifest cache, without the upstream.
func BenchmarkManifestGet(b *testing.B) {
	perClients(b, clientCounts, func(b *testing.B, clients int) {
		benchManifestRead(b, clients, http.MethodGet, immutableTags)
	})
}

// BenchmarkManifestHead is BenchmarkManifestGet with HEAD, which is how
// containerd and Docker resolve a tag to a digest before they pull.
func BenchmarkManifestHead(b *testing.B) {
	perClients(b, clientCounts, func(b *testing.B, clients int) {
		benchManifestRead(b, clients, http.MethodHead, immutableTags)
	})
}

// BenchmarkManifestGetMutable measures GET of image manifests by mutable
// tag from 32 concurrent clients: "latest" in 64 repositories in turn,
// which the default policy leaves mutable. taglock reads its ledger and
// forwards these to the upstream, as the bare proxy does.
func BenchmarkManifestGetMutable(b *testing.B) {
	perClients(b, []int{32}, func(b *testing.B, clients int) {
		benchManifestRead(b, clients, http.MethodGet, mutableTags)
	})
}

// manifestRef is one manifest a read benchmark asks for.
type manifestRef struct {
	repo, tag string
	body      []byte
	digest    string
}

func newManifestRef(repo, tag string, body []byte) manifestRef {
	return manifestRef{repo: repo, tag: tag, body: body, digest: digest.FromBytes(body).String()}
}

// immutableTags are 64 tags of one repository (g0 … g63), each holding its
// own manifest; the default policy makes them immutable.
func immutableTags(im image) []manifestRef {
	refs := make([]manifestRef, manifestTags)
	for k := range refs {
		refs[k] = newManifestRef("bench/get", fmt.Sprint("g", k), im.manifest(fmt.Sprint("get-", k)))
	}
	return refs
}

// mutableTags are the tag latest in 64 repositories, each holding its own
// manifest; the default policy makes latest mutable.
func mutableTags(im image) []manifestRef {
	refs := make([]manifestRef, manifestTags)
	for k := range refs {
		refs[k] = newManifestRef(fmt.Sprint("bench/latest-", k), "latest", im.manifest(fmt.Sprint("latest-", k)))
	}
	return refs
}

// benchManifestRead pushes the manifests refs names through every path
// and then measures method (GET or HEAD) of them by tag, in turn, from
// clients concurrent clients.
func benchManifestRead(b *testing.B, clients int, method string, refs func(image) []manifestRef) {
	s := startStack(b)
	ctx := b.Context()
	im := newImage()
	rs := refs(im)
	n := max(manifestGets, clients*manifestGetsPerClient)
	for _, t := range s.targets() {
		pushed := map[string]bool{}
		for _, r := range rs {
			if !pushed[r.repo] {
				if err := im.push(ctx, t, r.repo); err != nil {
					b.Fatal(err)
				}
				pushed[r.repo] = true
			}
			if err := t.putManifest(ctx, r.repo, r.tag, r.body); err != nil {
				b.Fatal(err)
			}
		}
	}
	read := func(t *target, n int) error {
		return concurrently(n, clients, func(k int) error {
			r := rs[k%len(rs)]
			return t.readManifest(ctx, method, r)
		})
	}
	// Untimed: checks every answer, warms connections and caches.
	for _, t := range s.targets() {
		if err := read(t, 4*len(rs)); err != nil {
			b.Fatal(err)
		}
	}
	rec := newRecorder()
	for i := 0; b.Loop(); i++ {
		for _, t := range rotate(s.targets(), i) {
			rec.measure(b, t, func() error { return read(t, n) })
		}
	}
	rec.report(b, float64(n), "req/s")
	reportPeakRSS(b, s.taglock)
}

// reportPeakRSS reports p's peak resident set size so far (VmHWM) as
// "taglock-rss-peak-MiB" and records it with the benchmark's result.
func reportPeakRSS(b *testing.B, p *process) {
	b.Helper()
	_, hwm, err := rssKiB(p)
	if err != nil {
		b.Fatal(err)
	}
	reportMetric(b, float64(hwm)/1024, "taglock-rss-peak-MiB")
}

// readManifest sends method (GET or HEAD) for r's tag with the Accept list
// containerd sends and checks the answer: r's digest and length and, for
// GET, r's length read.
func (t *target) readManifest(ctx context.Context, method string, r manifestRef) error {
	resp, err := t.do(ctx, method, "/v2/"+r.repo+"/manifests/"+r.tag, nil, 0, manifestAccept, http.StatusOK)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return fmt.Errorf("%s: %s manifest %s:%s: %w", t.name, method, r.repo, r.tag, err)
	}
	if method == http.MethodHead {
		n = resp.ContentLength
	}
	size := int64(len(r.body))
	if got := resp.Header.Get("Docker-Content-Digest"); got != r.digest || resp.ContentLength != size || n != size {
		return fmt.Errorf("%s: %s manifest %s:%s: digest %q, Content-Length %d, %d bytes; want %s, %d",
			t.name, method, r.repo, r.tag, got, resp.ContentLength, n, r.digest, size)
	}
	return nil
}

// Sizes for BenchmarkMemoryManifestCache: 1280 manifests of 32 KiB, 40
// MiB in all, more than the default cache holds (32 MiB).
const (
	cacheManifests    = 1280
	cacheManifestSize = 32 << 10
	cacheClients      = 32
)

// BenchmarkMemoryManifestCache measures taglock's memory when its manifest
// cache, at the default size, is full: a fresh taglock in front of an
// upstream, 1280 manifests of 32 KiB pushed through it to immutable tags,
// then every tag read in turn by 32 concurrent clients, once per
// iteration, while its VmRSS is sampled every 10 ms. The manifests
// (40 MiB) are more than the cache holds, so a read in turn always finds
// the least recently used entry evicted: the cache stays full and is
// refilled from the ledger all the time. It reports the RSS once the
// pushes are done, the peak while the reads run, VmHWM (the peak of the
// process's life), and what the RSS is made of at the end: anonymous
// memory (the Go heap, mostly) and file pages, and of those the ledger's,
// which bbolt maps.
func BenchmarkMemoryManifestCache(b *testing.B) {
	registry := proc.StartRegistry(b, "warn")
	p := startTaglock(b, "http://"+registry.Addr)
	t := newTarget("taglock", p.Addr)
	t.proc = p
	ctx := b.Context()
	im := newImage()
	const repo = "bench/cache"
	if err := im.push(ctx, t, repo); err != nil {
		b.Fatal(err)
	}
	pad := string(bytes.Repeat([]byte("x"), cacheManifestSize))
	refs := make([]manifestRef, cacheManifests)
	var total int
	for k := range refs {
		body := im.manifest(fmt.Sprint(k, "-", pad))
		refs[k] = newManifestRef(repo, fmt.Sprint("c", k), body)
		total += len(body)
	}
	if err := concurrently(len(refs), cacheClients, func(k int) error {
		return t.putManifest(ctx, repo, refs[k].tag, refs[k].body)
	}); err != nil {
		b.Fatal(err)
	}
	base, _, err := rssKiB(p)
	if err != nil {
		b.Fatal(err)
	}
	sampled, stop := sampleRSS(ctx, p, 10*time.Millisecond)
	var walls []time.Duration
	for b.Loop() {
		start := time.Now()
		if err := concurrently(len(refs), cacheClients, func(k int) error {
			return t.readManifest(ctx, http.MethodGet, refs[k])
		}); err != nil {
			b.Fatal(err)
		}
		walls = append(walls, time.Since(start))
	}
	peak, err := stop()
	if err != nil {
		b.Fatal(err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid))
	if err != nil {
		b.Fatal(err)
	}
	field := func(name string) float64 {
		kib, err := statusKiB(string(status), name)
		if err != nil {
			b.Fatal(err)
		}
		return float64(kib) / 1024
	}
	b.ReportMetric(0, "ns/op")
	reportMetric(b, float64(total)/mib, "manifests-MiB")
	reportMetric(b, float64(base)/1024, "rss-pushed-MiB")
	reportMetric(b, max(float64(peak)/1024, field("VmRSS")), "rss-peak-MiB")
	reportMetric(b, field("VmHWM"), "taglock-rss-peak-MiB")
	reportMetric(b, field("RssAnon"), "rss-anon-MiB")
	reportMetric(b, field("RssFile"), "rss-file-MiB")
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", p.Pid))
	if err != nil {
		b.Fatal(err)
	}
	ledger, err := mappedKiB(string(smaps), "/ledger.db")
	if err != nil {
		b.Fatal(err)
	}
	reportMetric(b, float64(ledger)/1024, "rss-ledger-MiB")
	reportMetric(b, median(rates(walls, cacheManifests)), "get-req/s")
	b.Logf("%d RSS samples", sampled())
}
