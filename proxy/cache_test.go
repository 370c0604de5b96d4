package proxy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

// clock is a settable time for TTL tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// cached is a proxy with the manifest cache over a script and a fresh
// ledger; latest is mutable, every other tag immutable.
func cached(t *testing.T, o CacheOptions, now func() time.Time) (*Server, *script, *bolt.Ledger) {
	t.Helper()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	up := newScript(t)
	return New(Options{Upstream: up, Ledger: l, Immutability: policy.DefaultImmutability(), Cache: o, Now: now}), up, l
}

// bind records repo:tag as bound to m, with its bytes when keep is set.
func bind(t *testing.T, l *bolt.Ledger, repo, tag, m string, mode policy.Mode, keep bool, closure ...digest.Digest) digest.Digest {
	t.Helper()
	d := digest.FromString(m)
	b := storage.Binding{Repo: repo, Tag: tag, Digest: d, MediaType: ociManifest, Size: int64(len(m)), Mode: mode,
		PushedAt: time.Now(), PushedBy: "ci", Closure: closure}
	if keep {
		b.Manifest = []byte(m)
	}
	if err := l.Put(context.Background(), []storage.Binding{b}, nil); err != nil {
		t.Fatal(err)
	}
	return d
}

// read sends a manifest GET or HEAD with the given headers.
func read(s *Server, method, path string, h http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	for k, v := range h {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

var acceptOCI = http.Header{"Accept": {ociManifest}}

// An immutable tag's reads are answered from the ledger with the headers
// Distribution sends, HEAD without a body, and If-None-Match with 304; the
// script expects no upstream request at all.
func TestCacheAnswersAnImmutableTagFromTheLedger(t *testing.T) {
	t.Parallel()
	s, _, l := cached(t, CacheOptions{Size: 1 << 20}, nil)
	m, _ := testManifest("a")
	d := bind(t, l, "team/app", "1.0", m, policy.Immutable, true)

	for _, method := range []string{"GET", "HEAD"} {
		w := read(s, method, "/v2/team/app/manifests/1.0", acceptOCI)
		want := map[string]string{"Docker-Content-Digest": d.String(), "Content-Type": ociManifest,
			"Content-Length": strconv.Itoa(len(m)), "Etag": `"` + d.String() + `"`}
		if w.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", method, w.Code, w.Body)
		}
		for k, v := range want {
			if got := w.Header().Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q", method, k, got, v)
			}
		}
		if body := w.Body.String(); method == "GET" && body != m || method == "HEAD" && body != "" {
			t.Errorf("%s body = %q", method, body)
		}
	}
	h := acceptOCI.Clone()
	h.Set("If-None-Match", `"`+d.String()+`"`)
	if w := read(s, "GET", "/v2/team/app/manifests/1.0", h); w.Code != http.StatusNotModified || w.Body.Len() != 0 {
		t.Errorf("If-None-Match with the digest: %d %q, want 304 without a body", w.Code, w.Body)
	}
}

// Reads the cache cannot be sure of go to the upstream: a mutable tag, a
// tombstone, a tag the ledger never saw, a client that does not name the
// media type (or names it with q=0), and a digest no immutable tag holds.
func TestCacheLeavesWhatItIsNotSureOfToTheUpstream(t *testing.T) {
	t.Parallel()
	s, up, l := cached(t, CacheOptions{Size: 1 << 20}, nil)
	m, _ := testManifest("a")
	bind(t, l, "team/app", "latest", m, policy.Mutable, true)
	gone := bind(t, l, "team/app", "2.0", m, policy.Immutable, true)
	b, _ := l.Binding(context.Background(), "team/app", "2.0")
	b.Deleted, b.DeletedAt = true, time.Now()
	if err := l.Put(context.Background(), []storage.Binding{b}, nil); err != nil {
		t.Fatal(err)
	}
	bind(t, l, "team/app", "1.0", m, policy.Immutable, true)
	other, _ := testManifest("other")

	for _, tc := range []struct {
		name, path string
		header     http.Header
	}{
		{"a mutable tag", "/v2/team/app/manifests/latest", acceptOCI},
		{"a deleted immutable tag", "/v2/team/app/manifests/2.0", acceptOCI},
		{"a tag the ledger never saw", "/v2/team/app/manifests/3.0", acceptOCI},
		{"no Accept", "/v2/team/app/manifests/1.0", nil},
		{"a wildcard Accept", "/v2/team/app/manifests/1.0", http.Header{"Accept": {"*/*"}}},
		{"another media type", "/v2/team/app/manifests/1.0", http.Header{"Accept": {"application/vnd.docker.distribution.manifest.v2+json"}}},
		{"the media type refused with q=0", "/v2/team/app/manifests/1.0", http.Header{"Accept": {ociManifest + ";q=0"}}},
		{"a digest no tag holds", "/v2/team/app/manifests/" + digest.FromString(other).String(), acceptOCI},
		{"the digest in another repository", "/v2/team/other/manifests/" + gone.String(), acceptOCI},
	} {
		up.expect(exchange{method: "GET", path: tc.path, status: 200, body: "from upstream"})
		if w := read(s, "GET", tc.path, tc.header); w.Body.String() != "from upstream" {
			t.Errorf("%s: answered %d %q, want the upstream's answer", tc.name, w.Code, w.Body)
		}
	}
}

// A binding adopted without its bytes, and an index's child manifest, are
// fetched by digest once, however many clients ask at the same time, and
// then answered from memory. Bytes that do not hash to the digest are
// never kept.
func TestCacheFetchesWhatItLacksOnce(t *testing.T) {
	t.Parallel()
	s, up, l := cached(t, CacheOptions{Size: 1 << 20}, nil)
	child, _ := testManifest("child")
	cd := digest.FromString(child)
	index := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
		ociManifest, cd, len(child))
	bind(t, l, "team/app", "1.0", index, policy.Immutable, false, cd)

	fetch := func(d digest.Digest, body string) exchange {
		return exchange{method: "GET", path: "/v2/team/app/manifests/" + d.String(), status: 200,
			header: http.Header{"Content-Type": {ociManifest + "; charset=utf-8"}}, body: body}
	}
	up.expect(fetch(cd, child))
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if w := read(s, "GET", "/v2/team/app/manifests/"+cd.String(), acceptOCI); w.Code != 200 || w.Body.String() != child {
				t.Errorf("child: %d %q", w.Code, w.Body)
			}
		})
	}
	wg.Wait()
	if w := read(s, "GET", "/v2/team/app/manifests/"+cd.String(), acceptOCI); w.Code != 200 || w.Header().Get("Content-Type") != ociManifest {
		t.Errorf("child from memory: %d %q", w.Code, w.Header().Get("Content-Type"))
	}

	// The index itself was adopted without bytes; the upstream sends
	// bytes that are not it: they are not kept, and the read goes on to
	// the upstream.
	id := digest.FromString(index)
	up.expect(fetch(id, "not the index"),
		exchange{method: "GET", path: "/v2/team/app/manifests/1.0", status: 200, body: "forwarded"})
	if w := read(s, "GET", "/v2/team/app/manifests/1.0", http.Header{"Accept": {"application/vnd.oci.image.index.v1+json"}}); w.Body.String() != "forwarded" {
		t.Errorf("index with wrong bytes upstream: %d %q, want the forwarded answer", w.Code, w.Body)
	}
}

// With ConfirmTTL the upstream is the gate: a credential is answered from
// the cache only after the upstream let it pull the repository, until the
// TTL runs out; a refusal is never remembered, and an unconfirmed read of
// an immutable tag asks the upstream for the recorded digest.
func TestCacheWaitsForTheUpstreamToConfirmTheCaller(t *testing.T) {
	t.Parallel()
	clk := &clock{now: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	s, up, l := cached(t, CacheOptions{Size: 1 << 20, ConfirmTTL: 30 * time.Second}, clk.Now)
	m, _ := testManifest("a")
	d := bind(t, l, "team/app", "1.0", m, policy.Immutable, true)
	byDigest := "/v2/team/app/manifests/" + d.String()
	as := func(auth string) http.Header {
		h := acceptOCI.Clone()
		if auth != "" {
			h.Set("Authorization", auth)
		}
		return h
	}

	// Anonymous: refused by the upstream, every time.
	for range 2 {
		up.expect(exchange{method: "GET", path: byDigest, status: 401, body: "no"})
		if w := read(s, "GET", "/v2/team/app/manifests/1.0", as("")); w.Code != 401 {
			t.Fatalf("anonymous: %d, want the upstream's 401", w.Code)
		}
	}
	// ci: confirmed by the upstream's 200, then answered from memory.
	up.expect(exchange{method: "GET", path: byDigest, status: 200, body: m})
	if w := read(s, "GET", "/v2/team/app/manifests/1.0", as("Basic Y2k6cw==")); w.Code != 200 {
		t.Fatalf("ci's first read: %d", w.Code)
	}
	for _, path := range []string{"/v2/team/app/manifests/1.0", byDigest} {
		if w := read(s, "GET", path, as("Basic Y2k6cw==")); w.Code != 200 || w.Body.String() != m {
			t.Errorf("ci's confirmed read of %s: %d", path, w.Code)
		}
	}
	// Another credential, and ci in another repository, are not confirmed.
	up.expect(exchange{method: "GET", path: byDigest, status: 403, body: "no"})
	if w := read(s, "GET", "/v2/team/app/manifests/1.0", as("Basic Ym9iOnM=")); w.Code != 403 {
		t.Errorf("bob: %d, want the upstream's 403", w.Code)
	}
	bind(t, l, "team/other", "1.0", m, policy.Immutable, true)
	up.expect(exchange{method: "GET", path: "/v2/team/other/manifests/" + d.String(), status: 401})
	if w := read(s, "GET", "/v2/team/other/manifests/1.0", as("Basic Y2k6cw==")); w.Code != 401 {
		t.Errorf("ci in another repository: %d, want the upstream's 401", w.Code)
	}
	// After the TTL, ci is asked about again; the upstream now refuses.
	clk.advance(30 * time.Second)
	for range 2 {
		up.expect(exchange{method: "GET", path: byDigest, status: 401})
		if w := read(s, "GET", "/v2/team/app/manifests/1.0", as("Basic Y2k6cw==")); w.Code != 401 {
			t.Errorf("ci after the TTL: %d, want the upstream's 401", w.Code)
		}
	}
}

// The access rules run before the cache: a caller they refuse is refused
// even when taglock holds the manifest.
func TestCacheNeverAnswersWhatTheAccessRulesRefuse(t *testing.T) {
	t.Parallel()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	access := policy.Access{Enabled: true, Rules: []policy.AccessRule{
		{Subjects: []string{"dev"}, Repositories: policy.Globs{policy.MustGlob("team/**")}, Actions: []policy.Action{policy.Pull}},
	}}
	s := New(Options{Upstream: newScript(t), Ledger: l, Immutability: policy.DefaultImmutability(),
		Cache: CacheOptions{Size: 1 << 20}, Auth: fakeAuth{}, Access: access})
	m, _ := testManifest("a")
	bind(t, l, "prod/app", "1.0", m, policy.Immutable, true)
	bind(t, l, "team/app", "1.0", m, policy.Immutable, true)
	for _, tc := range []struct {
		user, path string
		want       int
	}{
		{"dev", "/v2/team/app/manifests/1.0", http.StatusOK},
		{"dev", "/v2/prod/app/manifests/1.0", http.StatusForbidden},
		{"", "/v2/team/app/manifests/1.0", http.StatusUnauthorized},
	} {
		h := acceptOCI.Clone()
		if tc.user != "" {
			h.Set("X-Test-User", tc.user)
		}
		if w := read(s, "GET", tc.path, h); w.Code != tc.want {
			t.Errorf("%q GET %s: %d, want %d", tc.user, tc.path, w.Code, tc.want)
		}
	}
}

func TestLRUKeepsWithinItsBudget(t *testing.T) {
	t.Parallel()
	l := newLRU(8 * (100 + lruOverhead))
	for i := range 10 {
		l.add(heldKey{"r", digest.FromString(strconv.Itoa(i))}, heldManifest{body: make([]byte, 100)})
	}
	if l.used() > l.max {
		t.Errorf("used %d of %d", l.used(), l.max)
	}
	if _, ok := l.get(heldKey{"r", digest.FromString("0")}); ok {
		t.Error("the least recently used entry was kept")
	}
	if _, ok := l.get(heldKey{"r", digest.FromString("9")}); !ok {
		t.Error("the most recent entry was evicted")
	}
	l.add(heldKey{"r", digest.FromString("huge")}, heldManifest{body: make([]byte, l.max)})
	if _, ok := l.get(heldKey{"r", digest.FromString("huge")}); ok {
		t.Error("an entry over an eighth of the budget was kept")
	}
}

func TestAccepts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		accept []string
		want   bool
	}{
		{[]string{ociManifest}, true},
		{[]string{"application/vnd.oci.image.index.v1+json, " + ociManifest}, true},
		{[]string{"application/json", ociManifest + ";q=0.5"}, true},
		{[]string{"APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON"}, true},
		{[]string{ociManifest + "; q=0"}, false},
		{[]string{ociManifest + ";q=nonsense"}, false},
		{[]string{"*/*"}, false},
		{[]string{"application/*"}, false},
		{nil, false},
		{[]string{""}, false},
	} {
		if got := accepts(http.Header{"Accept": tc.accept}, ociManifest); got != tc.want {
			t.Errorf("accepts(%q) = %v, want %v", tc.accept, got, tc.want)
		}
	}
}
