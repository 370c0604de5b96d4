package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// exchange is one request the proxy must send to the upstream, and the
// upstream's answer.
type exchange struct {
	method, path string
	// query, when set, is the exact encoded query the request must carry.
	query string
	// want are headers the request must carry, with exactly these values.
	want http.Header
	// sent, when set, is the exact body the request must carry.
	sent string
	// anyOrder lets the exchange happen in any order among the run of
	// anyOrder exchanges it belongs to: the lookups taglock makes in
	// parallel.
	anyOrder bool

	status int
	header http.Header
	body   string
	err    error // a transport error instead of an answer
}

// script is an Upstream that expects exactly its exchanges, in order, in
// the manner of regclient's internal/reqresp: a request it does not expect
// fails the test, and so does an exchange that never happens. A request
// matches an exchange by method and path; what else the exchange wants of
// it (query, headers, body) is checked once it matches.
type script struct {
	t     *testing.T
	mu    sync.Mutex
	steps []exchange
}

func newScript(t *testing.T, steps ...exchange) *script {
	s := &script{t: t, steps: steps}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, e := range s.steps {
			t.Errorf("the upstream never got %s %s", e.method, e.path)
		}
	})
	return s
}

// expect adds exchanges.
func (s *script) expect(steps ...exchange) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = append(s.steps, steps...)
}

func (s *script) next(r *http.Request) (exchange, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.steps) == 0 {
		s.t.Errorf("unexpected upstream request %s %s", r.Method, r.URL)
		return exchange{}, false
	}
	for i, e := range s.steps {
		if i > 0 && !(e.anyOrder && s.steps[i-1].anyOrder) {
			break
		}
		if e.method == r.Method && e.path == r.URL.Path {
			s.steps = slices.Delete(s.steps, i, i+1)
			s.check(e, r)
			return e, true
		}
	}
	s.t.Errorf("upstream got %s %s, want %s %s", r.Method, r.URL.Path, s.steps[0].method, s.steps[0].path)
	return exchange{}, false
}

// check fails the test when r does not carry what e wants of it.
func (s *script) check(e exchange, r *http.Request) {
	if e.query != "" && r.URL.RawQuery != e.query {
		s.t.Errorf("upstream got %s %s with query %q, want %q", r.Method, r.URL.Path, r.URL.RawQuery, e.query)
	}
	for k, vs := range e.want {
		if got := r.Header.Values(k); !slices.Equal(got, vs) {
			s.t.Errorf("upstream got %s %s with %s %q, want %q", r.Method, r.URL.Path, k, got, vs)
		}
	}
	if e.sent != "" {
		var b []byte
		if r.Body != nil {
			b, _ = io.ReadAll(r.Body)
		}
		if string(b) != e.sent {
			s.t.Errorf("upstream got %s %s with body %q, want %q", r.Method, r.URL.Path, b, e.sent)
		}
	}
}

// RoundTrip implements Upstream.
func (s *script) RoundTrip(r *http.Request) (*http.Response, error) {
	e, ok := s.next(r)
	if !ok {
		return nil, errors.New("unexpected request")
	}
	if e.err != nil {
		return nil, e.err
	}
	h := e.header.Clone()
	if h == nil {
		h = http.Header{}
	}
	return &http.Response{StatusCode: e.status, Header: h, Body: io.NopCloser(strings.NewReader(e.body)), Request: r}, nil
}

// Forward implements Upstream.
func (s *script) Forward(w http.ResponseWriter, r *http.Request) {
	resp, err := s.RoundTrip(r)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// scripted is a proxy over a script and a fresh ledger.
func scripted(t *testing.T, steps ...exchange) (*Server, *script, *bolt.Ledger) {
	t.Helper()
	s, up, l := scriptedWith(t, Options{Immutability: policy.DefaultImmutability()}, steps...)
	return s, up, l.Ledger
}

// scriptedWith is scripted with the settings of o, whose Upstream and
// Ledger it fills in. The ledger fails its writes on demand (failing), and
// shares the proxy's clock o.Now.
func scriptedWith(t *testing.T, o Options, steps ...exchange) (*Server, *script, *faultyLedger) {
	t.Helper()
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true, Now: o.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	up := newScript(t, steps...)
	o.Upstream, o.Ledger = up, &faultyLedger{Ledger: l}
	return New(o), up, o.Ledger.(*faultyLedger)
}

// testRules is the built-in immutability configuration, with every tag of
// team/dev mutable and the tag "edge" in warn mode.
func testRules() policy.Immutability {
	im := policy.DefaultImmutability()
	im.Rules = append([]policy.Rule{
		{Name: "dev", Repositories: policy.Globs{policy.MustGlob("team/dev")}, Mode: policy.Mutable},
		{Name: "edge", Tags: policy.Globs{policy.MustGlob("edge")}, Mode: policy.Warn},
	}, im.Rules...)
	return im
}

// testClock is a clock that stands still until advanced. A request that
// waits for a reservation waits on it for ever, so tests that use it never
// make one wait.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock { return &testClock{t: time.Now().UTC().Truncate(time.Second)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testManifest is an image manifest naming a config and one layer made from
// name, and its digest.
func testManifest(name string) (string, digest.Digest) {
	m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":2},`+
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":3}]}`,
		digest.FromString(name+"/config"), digest.FromString(name+"/layer"))
	return m, digest.FromString(m)
}

// indexManifest is an OCI image index of the manifests ms, and its digest.
func indexManifest(ms ...string) (string, digest.Digest) {
	var entries []string
	for _, m := range ms {
		entries = append(entries, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%d}`,
			digest.FromString(m), len(m)))
	}
	m := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + strings.Join(entries, ",") + `]}`
	return m, digest.FromString(m)
}

// serve sends one client request to the proxy.
func serve(s *Server, method, path, body string) *httptest.ResponseRecorder {
	return serveAs(s, "", method, path, body)
}

// serveAs sends one client request to the proxy with the Basic credentials
// of user, or none when user is "".
func serveAs(s *Server, user, method, path, body string) *httptest.ResponseRecorder {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, path, rd)
	if body != "" {
		r.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	}
	if user != "" {
		r.SetBasicAuth(user, "secret")
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

func created(d digest.Digest) http.Header {
	return http.Header{"Docker-Content-Digest": {d.String()}}
}

// The upstream's usual answers, by what it holds.

// app is the repository most tests push to.
const app = "/v2/team/app"

// notThere is a GET the upstream answers 404: it does not hold path.
func notThere(path string) exchange { return exchange{method: "GET", path: path, status: 404} }

// holds is a GET of a manifest the upstream answers with m.
func holds(path, m string) exchange {
	return exchange{method: "GET", path: path, status: 200, body: m,
		header: http.Header{"Content-Type": {"application/vnd.oci.image.manifest.v1+json"}}}
}

// stores is a PUT of the manifest m, which the upstream stores and names.
func stores(path, m string) exchange {
	return exchange{method: "PUT", path: path, sent: m, status: 201, header: created(digest.FromString(m))}
}

// unreachable is a request the upstream never answers.
func unreachable(method, path string) exchange {
	return exchange{method: method, path: path, err: errors.New("connection reset by peer")}
}

// tagList is the first page of repo's tag list, as taglock asks for it.
func tagList(repo string, tags ...string) exchange {
	b, _ := json.Marshal(map[string]any{"name": repo, "tags": tags})
	return exchange{method: "GET", path: "/v2/" + repo + "/tags/list", query: "n=1000", status: 200, body: string(b)}
}

// anyOrder marks steps as made in parallel: they may happen in any order.
func anyOrder(steps ...exchange) []exchange {
	for i := range steps {
		steps[i].anyOrder = true
	}
	return steps
}

// What the client was answered.

// refusedWith fails the test unless w is an OCI error answer with status
// and code, and returns its message.
func refusedWith(t *testing.T, w *httptest.ResponseRecorder, status int, code string) string {
	t.Helper()
	if w.Code != status {
		t.Errorf("answer %d %s, want %d %s", w.Code, w.Body, status, code)
		return ""
	}
	errs := ociErrors(t, w.Body.Bytes())
	if errs[0].Code != code {
		t.Errorf("answer %d with code %s (%s), want %s", w.Code, errs[0].Code, errs[0].Message, code)
	}
	return errs[0].Message
}

// answered fails the test unless w has status, and for a 2xx the
// Docker-Content-Digest want ("" for none).
func answered(t *testing.T, w *httptest.ResponseRecorder, status int, want digest.Digest) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("answer %d %s, want %d", w.Code, w.Body, status)
	}
	if got := w.Header().Get("Docker-Content-Digest"); got != want.String() {
		t.Errorf("Docker-Content-Digest %q, want %q", got, want)
	}
}

// What the ledger holds.

// testLedger is what tests read of a ledger.
type testLedger interface {
	Ledger
	History(ctx context.Context, repo, tag string, limit int) ([]storage.Event, error)
}

// bindingOf is repo:tag's binding; the test fails when there is none.
func bindingOf(t *testing.T, l testLedger, repo, tag string) storage.Binding {
	t.Helper()
	b, err := l.Binding(t.Context(), repo, tag)
	if err != nil {
		t.Fatalf("binding %s:%s: %v", repo, tag, err)
	}
	return b
}

// unbound fails the test when the ledger has a binding for repo:tag.
func unbound(t *testing.T, l testLedger, repo, tag string) {
	t.Helper()
	if b, err := l.Binding(t.Context(), repo, tag); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("binding %s:%s = %+v, %v; want none", repo, tag, b, err)
	}
}

// history is repo:tag's history ("" for the whole repository's), oldest
// first.
func history(t *testing.T, l testLedger, repo, tag string) []storage.Event {
	t.Helper()
	evs, err := l.History(t.Context(), repo, tag, 0)
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(evs)
	return evs
}

// kinds are the kinds of evs, in order.
func kinds(evs []storage.Event) []storage.EventKind {
	var out []storage.EventKind
	for _, e := range evs {
		out = append(out, e.Kind)
	}
	return out
}

// historyIs fails the test unless repo:tag's history has exactly these
// kinds, and returns it.
func historyIs(t *testing.T, l testLedger, repo, tag string, want ...storage.EventKind) []storage.Event {
	t.Helper()
	evs := history(t, l, repo, tag)
	if got := kinds(evs); !slices.Equal(got, want) {
		t.Errorf("history of %s:%s = %v, want %v", repo, tag, got, want)
	}
	return evs
}

// pending is the ledger's reservations.
func pending(t *testing.T, l testLedger) []storage.Reservation {
	t.Helper()
	res, err := l.Reservations(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// noneHeld fails the test when a reservation is left.
func noneHeld(t *testing.T, l testLedger) {
	t.Helper()
	if res := pending(t, l); len(res) != 0 {
		t.Errorf("reservations left: %+v", res)
	}
}
