package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// exchange is one request the proxy must send to the upstream, and the
// upstream's answer.
type exchange struct {
	method, path string
	status       int
	header       http.Header
	body         string
	err          error // a transport error instead of an answer
}

// script is an Upstream that expects exactly its exchanges, in order, in
// the manner of regclient's internal/reqresp: a request it does not expect
// fails the test, and so does an exchange that never happens.
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
		s.t.Errorf("unexpected upstream request %s %s", r.Method, r.URL.Path)
		return exchange{}, false
	}
	e := s.steps[0]
	if e.method != r.Method || e.path != r.URL.Path {
		s.t.Errorf("upstream got %s %s, want %s %s", r.Method, r.URL.Path, e.method, e.path)
		return exchange{}, false
	}
	s.steps = s.steps[1:]
	return e, true
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
	l, err := bolt.Open(filepath.Join(t.TempDir(), "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	up := newScript(t, steps...)
	return New(Options{Upstream: up, Ledger: l, Immutability: policy.DefaultImmutability()}), up, l
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

// serve sends one client request to the proxy.
func serve(s *Server, method, path, body string) *httptest.ResponseRecorder {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := httptest.NewRequest(method, path, rd)
	if body != "" {
		r.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

func created(d digest.Digest) http.Header {
	return http.Header{"Docker-Content-Digest": {d.String()}}
}

// TestPushOfANewTag: the tag is looked up on the upstream (it might
// predate taglock), the exact bytes are forwarded, and the 201 binds it.
func TestPushOfANewTag(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, l := scripted(t,
		exchange{method: "GET", path: "/v2/team/app/manifests/1.0", status: 404},
		exchange{method: "PUT", path: "/v2/team/app/manifests/1.0", status: 201, header: created(d)})
	if w := serve(s, "PUT", "/v2/team/app/manifests/1.0", m); w.Code != 201 || w.Header().Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("push: %d %s, want 201 with the digest", w.Code, w.Body)
	}
	b, err := l.Binding(context.Background(), "team/app", "1.0")
	if err != nil || b.Digest != d || b.Mode != storage.ModeImmutable || b.PushedBy != "anonymous" || !bytes.Equal(b.Manifest, []byte(m)) {
		t.Errorf("binding = %+v, %v; want %s immutable with its bytes", b, err, d)
	}
}

// TestMoveOfAnImmutableTagNeverReachesTheUpstream: a push of other content
// to a bound immutable tag is refused by taglock alone.
func TestMoveOfAnImmutableTagNeverReachesTheUpstream(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, _ := scripted(t,
		exchange{method: "GET", path: "/v2/team/app/manifests/1.0", status: 404},
		exchange{method: "PUT", path: "/v2/team/app/manifests/1.0", status: 201, header: created(d)})
	serve(s, "PUT", "/v2/team/app/manifests/1.0", m)
	other, _ := testManifest("b")
	w := serve(s, "PUT", "/v2/team/app/manifests/1.0", other)
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), `"DENIED"`) || !strings.Contains(w.Body.String(), d.String()) {
		t.Errorf("move: %d %s, want 403 DENIED naming %s", w.Code, w.Body, d)
	}
}

// TestIdenticalRePush: the same bytes again are forwarded and accepted, and
// the first push's record stays.
func TestIdenticalRePush(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, up, l := scripted(t,
		exchange{method: "GET", path: "/v2/team/app/manifests/1.0", status: 404},
		exchange{method: "PUT", path: "/v2/team/app/manifests/1.0", status: 201, header: created(d)})
	serve(s, "PUT", "/v2/team/app/manifests/1.0", m)
	first, _ := l.Binding(context.Background(), "team/app", "1.0")
	up.expect(exchange{method: "PUT", path: "/v2/team/app/manifests/1.0", status: 201, header: created(d)})
	if w := serve(s, "PUT", "/v2/team/app/manifests/1.0", m); w.Code != 201 {
		t.Fatalf("identical re-push: %d %s", w.Code, w.Body)
	}
	b, _ := l.Binding(context.Background(), "team/app", "1.0")
	if !b.PushedAt.Equal(first.PushedAt) {
		t.Errorf("re-push rewrote the first push time: %v, want %v", b.PushedAt, first.PushedAt)
	}
}

// TestPushAnswered5xxIsSettled: a 5xx after the upstream may have stored
// the manifest leaves the tag held; the settler commits it once the
// upstream shows it.
func TestPushAnswered5xxIsSettled(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, up, l := scripted(t,
		exchange{method: "GET", path: "/v2/team/app/manifests/1.0", status: 404},
		exchange{method: "PUT", path: "/v2/team/app/manifests/1.0", status: 500, body: `{"errors":[{"code":"UNKNOWN","message":"disk hiccup"}]}`})
	w := serve(s, "PUT", "/v2/team/app/manifests/1.0", m)
	if w.Code != http.StatusBadGateway || !strings.Contains(w.Body.String(), "not known yet") || !strings.Contains(w.Body.String(), "disk hiccup") {
		t.Fatalf("push answered 500: %d %s, want 502 saying the outcome is not known yet, with the upstream's message", w.Code, w.Body)
	}
	if res, _ := l.Reservations(context.Background()); len(res) != 1 {
		t.Fatalf("reservations = %+v, want the push held", res)
	}
	up.expect(exchange{method: "GET", path: "/v2/team/app/manifests/1.0", status: 200,
		header: http.Header{"Content-Type": {"application/vnd.oci.image.manifest.v1+json"}}, body: m})
	if err := s.Reservations().Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b, err := l.Binding(context.Background(), "team/app", "1.0"); err != nil || b.Digest != d || b.PushedBy != "anonymous (reconciled)" {
		t.Errorf("binding after the settle = %+v, %v; want %s pushed by anonymous (reconciled)", b, err, d)
	}
}

// TestDeleteOfProtectedContentNeverReachesTheUpstream: a delete by digest
// of a manifest an immutable tag is bound to, and of one of its layers, is
// refused after taglock has looked for upstream tags it never saw.
func TestDeleteOfProtectedContentNeverReachesTheUpstream(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, up, _ := scripted(t,
		exchange{method: "GET", path: "/v2/team/app/manifests/1.0", status: 404},
		exchange{method: "PUT", path: "/v2/team/app/manifests/1.0", status: 201, header: created(d)})
	serve(s, "PUT", "/v2/team/app/manifests/1.0", m)
	tags := exchange{method: "GET", path: "/v2/team/app/tags/list", status: 200, body: `{"name":"team/app","tags":["1.0"]}`}
	for _, path := range []string{"/v2/team/app/manifests/" + d.String(), "/v2/team/app/blobs/" + digest.FromString("a/layer").String()} {
		up.expect(tags)
		if w := serve(s, "DELETE", path, ""); w.Code != http.StatusForbidden {
			t.Errorf("DELETE %s: %d %s, want 403", path, w.Code, w.Body)
		}
	}
}

// TestDeleteOfAMutableTagIsRecorded: a delete of a mutable tag is
// forwarded and its binding becomes a tombstone in the same write that ends
// the reservation.
func TestDeleteOfAMutableTagIsRecorded(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, up, l := scripted(t,
		exchange{method: "PUT", path: "/v2/team/app/manifests/latest", status: 201, header: created(d)})
	serve(s, "PUT", "/v2/team/app/manifests/latest", m)
	up.expect(exchange{method: "DELETE", path: "/v2/team/app/manifests/latest", status: 202})
	if w := serve(s, "DELETE", "/v2/team/app/manifests/latest", ""); w.Code != http.StatusAccepted {
		t.Fatalf("delete: %d %s", w.Code, w.Body)
	}
	b, err := l.Binding(context.Background(), "team/app", "latest")
	if err != nil || !b.Deleted {
		t.Errorf("latest after the delete = %+v, %v; want a tombstone", b, err)
	}
	if res, _ := l.Reservations(context.Background()); len(res) != 0 {
		t.Errorf("reservations left: %+v", res)
	}
}
