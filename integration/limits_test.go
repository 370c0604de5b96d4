package integration

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
)

// patience is how long a test waits for what must happen soon. It is far
// above every bound these tests configure, so a loaded machine cannot make
// them fail; only a wait that never ends can.
const patience = 20 * time.Second

// withLimits changes the limits section.
func withLimits(fn func(*config.Limits)) func(*config.Config) {
	return func(c *config.Config) { fn(&c.Limits) }
}

// metric reads one series from taglock's /metrics, named as the text
// format writes it (labels in order); 0 when it has no sample yet.
func (e *Env) metric(t *testing.T, name string) float64 {
	t.Helper()
	_, body := do(t, http.MethodGet, e.URL("/metrics"), nil, nil)
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %q", name, line)
			}
			return f
		}
	}
	return 0
}

// waitMetric waits until cond holds for the metric's value.
func (e *Env) waitMetric(t *testing.T, name string, what string, cond func(float64) bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond(e.metric(t, name)) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never %s (now %v)", name, what, e.metric(t, name))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startUpload opens an upload session in repo and returns its location.
func (e *Env) startUpload(t *testing.T, repo string) string {
	t.Helper()
	resp, body := do(t, http.MethodPost, e.URL("/v2/"+repo+"/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload: %d %s", resp.StatusCode, body)
	}
	loc := resp.Header.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = e.URL(loc)
	}
	return loc
}

// trickleBody delivers one byte every gap until stop is closed or until
// it has run for max.
type trickleBody struct {
	gap  time.Duration
	stop <-chan struct{}
	end  time.Time
}

func (b *trickleBody) Read(p []byte) (int, error) {
	if time.Now().After(b.end) {
		return 0, io.EOF
	}
	select {
	case <-b.stop:
		return 0, io.EOF
	case <-time.After(b.gap):
		p[0] = 'x'
		return 1, nil
	}
}

// trickle starts an upload to repo whose PATCH sends one byte every gap,
// like a client on a dying link, for at most max. It returns once taglock
// is serving the PATCH (taglock_uploads_in_flight counts it); stop ends the
// body and waits for the answer.
func (e *Env) trickle(t *testing.T, repo string, gap, max time.Duration) (stop func()) {
	t.Helper()
	loc := e.startUpload(t, repo)
	before := e.metric(t, "taglock_uploads_in_flight")
	ch := make(chan struct{})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPatch, loc, &trickleBody{gap: gap, stop: ch, end: time.Now().Add(max)})
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	e.waitMetric(t, "taglock_uploads_in_flight", "counted the trickling upload", func(v float64) bool { return v > before })
	var once sync.Once
	stop = func() {
		once.Do(func() {
			close(ch)
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

// An upload trickling one byte at a time no longer stalls every write while
// retention collects garbage: apply waits a bounded time for it, defers
// the collection instead of sweeping while a write could land blobs, and
// reports that; unrelated writes meanwhile are answered within their bound
// (let in, or 503 with Retry-After), never held for as long as the slow
// client chooses. The next run collects what was owed.
func TestSlowUploadDoesNotStallWritesDuringGC(t *testing.T) {
	t.Parallel()
	e := MustEnv(t, Embedded, retentionConfig(1000), withLimits(func(l *config.Limits) {
		l.GCDrainTimeout = config.Duration(time.Second)
		l.GCWriteWait = config.Duration(3 * time.Second)
	}))
	for i := range 5 { // the policy keeps the 3 most recent: 2 to delete
		MustPush(t, e.Addr, fmt.Sprintf("ci/gc:build-%02d", i), MustImage(t))
	}
	// The slow client would trickle for 45 s; anything near that is the bug.
	stopTrickle := e.trickle(t, "other/slow", 200*time.Millisecond, 45*time.Second)

	type answer struct {
		status  int
		retry   string
		code    string
		elapsed time.Duration
	}
	var (
		answers []answer
		wg      sync.WaitGroup
	)
	done := make(chan struct{})
	wg.Add(1)
	go func() { // unrelated writes, all through the run
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			start := time.Now()
			resp, err := http.Post(e.URL("/v2/other/fast/blobs/uploads/"), "", nil)
			if err != nil {
				t.Errorf("unrelated upload during the run: %v", err)
				return
			}
			var doc struct {
				Errors []struct{ Code string } `json:"errors"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&doc)
			resp.Body.Close()
			a := answer{status: resp.StatusCode, retry: resp.Header.Get("Retry-After"), elapsed: time.Since(start)}
			if len(doc.Errors) > 0 {
				a.code = doc.Errors[0].Code
			}
			answers = append(answers, a)
		}
	}()
	c := admin.NewClient(e.srv.AdminSocket())
	res, err := c.RetentionApply(t.Context())
	close(done)
	wg.Wait()
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if res.Deleted == 0 {
		t.Fatal("apply deleted nothing, so it never collected garbage")
	}
	if res.GC == nil || !res.GC.Deferred || !strings.Contains(res.GC.Reason, "in flight") || res.GC.BlobsDeleted != 0 {
		t.Errorf("garbage collection with an upload in flight: %+v, want it deferred, naming the write in flight, sweeping nothing", res.GC)
	}
	var worst time.Duration
	for _, a := range answers {
		worst = max(worst, a.elapsed)
		switch {
		case a.status == http.StatusAccepted:
		case a.status == http.StatusServiceUnavailable && a.code == "UNAVAILABLE" && a.retry != "":
		default:
			t.Errorf("unrelated upload during the run: %d %s (Retry-After %q), want 202, or 503 UNAVAILABLE with Retry-After", a.status, a.code, a.retry)
		}
	}
	// gc_drain_timeout 1s, gc_write_wait 3s: an answer 15 s late is held
	// by the slow client, not by taglock's bounds.
	if len(answers) == 0 || worst > 15*time.Second {
		t.Errorf("%d unrelated uploads during the run, the slowest answered after %s; want each within the bounds", len(answers), worst)
	}
	if got := e.metric(t, "taglock_retention_gc_deferred_total"); got != 1 {
		t.Errorf("taglock_retention_gc_deferred_total = %v, want 1", got)
	}

	// Once the slow upload is over, the next run collects what was owed,
	// though it deletes nothing.
	stopTrickle()
	res, err = c.RetentionApply(t.Context())
	if err != nil {
		t.Fatalf("second apply: %v", err)
	}
	if res.Deleted != 0 || res.GC == nil || res.GC.Deferred || res.GC.BlobsDeleted == 0 {
		t.Errorf("second apply: deleted %d, gc %+v; want nothing deleted and the owed collection run", res.Deleted, res.GC)
	}
}

// A client that sends its headers too slowly is disconnected after
// limits.read_header_timeout, and one that leaves a keep-alive connection
// idle after limits.idle_timeout.
func TestSlowAndIdleConnectionsAreClosed(t *testing.T) {
	t.Parallel()
	e := MustEnv(t, Embedded, withLimits(func(l *config.Limits) {
		l.ReadHeaderTimeout = config.Duration(300 * time.Millisecond)
		l.IdleTimeout = config.Duration(300 * time.Millisecond)
	}))
	wantClosed := func(t *testing.T, conn net.Conn, r io.Reader) {
		t.Helper()
		_ = conn.SetReadDeadline(time.Now().Add(patience))
		_, err := io.ReadAll(r)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("taglock kept the connection open for %s", patience)
		}
	}
	t.Run("headers too slow", func(t *testing.T) {
		conn, err := net.Dial("tcp", e.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /v2/ HTTP/1.1\r\nHost: %s\r\n", e.Addr) // and never the blank line
		wantClosed(t, conn, conn)
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		conn, err := net.Dial("tcp", e.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /v2/ HTTP/1.1\r\nHost: %s\r\n\r\n", e.Addr)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Close {
			t.Fatal("taglock closed the connection itself; nothing to keep alive")
		}
		wantClosed(t, conn, br)
	})
}

// An upload whose body stops delivering is aborted after
// limits.body_idle_timeout, and its upload slot is free again.
func TestStalledUploadBodyIsAborted(t *testing.T) {
	t.Parallel()
	e := MustEnv(t, Embedded, withLimits(func(l *config.Limits) {
		l.BodyIdleTimeout = config.Duration(300 * time.Millisecond)
	}))
	loc := e.startUpload(t, "team/stalled")
	conn, err := net.Dial("tcp", e.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	target := strings.TrimPrefix(loc, "http://"+e.Addr)
	fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\nx", target, e.Addr)
	_ = conn.SetReadDeadline(time.Now().Add(patience))
	if _, err := io.ReadAll(conn); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an upload body stalled after 1 of 100 bytes was still open after %s", patience)
	}
	e.waitMetric(t, "taglock_uploads_in_flight", "dropped to 0", func(v float64) bool { return v == 0 })
}

// With limits.max_concurrent_uploads in flight, one more upload is refused
// at once with 429 TOOMANYREQUESTS and Retry-After, and accepted again once
// a slot is free.
func TestUploadCap(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, withLimits(func(l *config.Limits) { l.MaxConcurrentUploads = 1 }))
		stop := e.trickle(t, "team/slow", 100*time.Millisecond, patience)
		resp, body := do(t, http.MethodPost, e.URL("/v2/team/other/blobs/uploads/"), nil, nil)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("upload over the cap: %d (Retry-After %q) %s, want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
		if oe := parseOCI(t, resp.StatusCode, body); oe.Code != "TOOMANYREQUESTS" {
			t.Errorf("code %s, want TOOMANYREQUESTS", oe.Code)
		}
		img := MustImage(t)
		stop()
		e.waitMetric(t, "taglock_uploads_in_flight", "dropped to 0", func(v float64) bool { return v == 0 })
		MustPush(t, e.Addr, "team/app:1.0", img)
		e.wantServed(t, "team/app:1.0", MustDigest(t, img))
	})
}

// A manifest over limits.max_manifest_size is refused with 413
// SIZE_INVALID naming the configured limit, and binds nothing; one under
// it is pushed as usual.
func TestManifestSizeLimit(t *testing.T) {
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, withLimits(func(l *config.Limits) { l.MaxManifestSize = 2 << 10 }))
		img := MustImage(t)
		MustPush(t, e.Addr, "team/app:small", img)
		big := MustManifest(t, img)
		pad := strings.Repeat("x", 3<<10)
		big.Raw = []byte(strings.Replace(string(big.Raw), `"schemaVersion":2`, `"schemaVersion":2,"annotations":{"pad":"`+pad+`"}`, 1))
		resp, body := putManifest(t, e.Addr, "/v2/team/app/manifests/big", big)
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("oversized manifest: %d %s, want 413", resp.StatusCode, body)
		}
		if oe := parseOCI(t, resp.StatusCode, body); oe.Code != "SIZE_INVALID" || !strings.Contains(oe.Message, "2048 byte limit") {
			t.Errorf("oversized manifest: %s %q, want SIZE_INVALID naming the 2048 byte limit", oe.Code, oe.Message)
		}
		if resp, _ := do(t, http.MethodHead, e.URL("/v2/team/app/manifests/big"), nil,
			http.Header{"Accept": {big.MediaType}}); resp.StatusCode != http.StatusNotFound {
			t.Errorf("the refused manifest's tag answers %d, want 404", resp.StatusCode)
		}
	})
}

// A client that stops reading a blob download is cut off after
// limits.write_idle_timeout instead of holding the response, and its
// handler, open: taglock finishes the request, and the client gets part of
// the blob at most.
func TestStalledDownloadIsCutOff(t *testing.T) {
	t.Parallel()
	e := MustEnv(t, Embedded, withLimits(func(l *config.Limits) {
		l.WriteIdleTimeout = config.Duration(300 * time.Millisecond)
	}))
	blob := make([]byte, 32<<20) // far more than the socket buffers hold
	d := digest.FromBytes(blob)
	loc := e.startUpload(t, "team/big")
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	if resp, body := do(t, http.MethodPut, loc+sep+"digest="+d.String(), blob,
		http.Header{"Content-Type": {"application/octet-stream"}}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload: %d %s", resp.StatusCode, body)
	}
	conn, err := net.Dial("tcp", e.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.(*net.TCPConn).SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /v2/team/big/blobs/%s HTTP/1.1\r\nHost: %s\r\n\r\n", d, e.Addr)
	// Read nothing until taglock has finished the request.
	series := `taglock_requests_total{code="200",method="GET",route="blob"}`
	e.waitMetric(t, series, "counted the download", func(v float64) bool { return v >= 1 })
	// What is left is what the kernels had buffered; the connection may
	// end, or (the server's socket closed with data unsent) go quiet.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := io.Copy(io.Discard, resp.Body); n >= int64(len(blob)) {
		t.Fatalf("read all %d bytes of a download the client stalled", n)
	}
}
