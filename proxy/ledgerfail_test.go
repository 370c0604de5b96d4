package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/proxy/embedded"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// faultyLedger is a ledger whose writes fail, as on a full or read-only
// disk, for the operations named in fail. Reads always work.
type faultyLedger struct {
	*bolt.Ledger
	mu   sync.Mutex
	fail map[string]bool
}

var _ Ledger = (*faultyLedger)(nil)

// failing makes the named write operations fail from now on; none heals it.
func (f *faultyLedger) failing(ops ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = map[string]bool{}
	for _, op := range ops {
		f.fail[op] = true
	}
}

func (f *faultyLedger) check(op string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail[op] {
		return fmt.Errorf("%s: write %s: %w", op, f.Path(), syscall.ENOSPC)
	}
	return nil
}

// allWrites are the write operations of the proxy's Ledger interface.
var allWrites = []string{"Reserve", "Commit", "CommitDelete", "Release", "Put", "Append", "PutManifest"}

func (f *faultyLedger) Reserve(ctx context.Context, r storage.Reservation) (storage.Reservation, error) {
	if err := f.check("Reserve"); err != nil {
		return storage.Reservation{}, err
	}
	return f.Ledger.Reserve(ctx, r)
}

func (f *faultyLedger) Commit(ctx context.Context, id string, bs []storage.Binding, evs []storage.Event, ms ...storage.Manifest) error {
	if err := f.check("Commit"); err != nil {
		return err
	}
	return f.Ledger.Commit(ctx, id, bs, evs, ms...)
}

func (f *faultyLedger) CommitDelete(ctx context.Context, id string, ev storage.Event) ([]storage.Binding, error) {
	if err := f.check("CommitDelete"); err != nil {
		return nil, err
	}
	return f.Ledger.CommitDelete(ctx, id, ev)
}

func (f *faultyLedger) Release(ctx context.Context, id string) error {
	if err := f.check("Release"); err != nil {
		return err
	}
	return f.Ledger.Release(ctx, id)
}

func (f *faultyLedger) Put(ctx context.Context, bs []storage.Binding, evs []storage.Event) error {
	if err := f.check("Put"); err != nil {
		return err
	}
	return f.Ledger.Put(ctx, bs, evs)
}

func (f *faultyLedger) Append(ctx context.Context, evs ...storage.Event) error {
	if err := f.check("Append"); err != nil {
		return err
	}
	return f.Ledger.Append(ctx, evs...)
}

func (f *faultyLedger) PutManifest(ctx context.Context, m storage.Manifest) error {
	if err := f.check("PutManifest"); err != nil {
		return err
	}
	return f.Ledger.PutManifest(ctx, m)
}

// countingUpstream counts the requests of each method it passes on.
type countingUpstream struct {
	Upstream
	mu   sync.Mutex
	seen map[string]int
}

func (u *countingUpstream) count(method string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.seen[method]++
}

func (u *countingUpstream) Forward(w http.ResponseWriter, r *http.Request) {
	u.count(r.Method)
	u.Upstream.Forward(w, r)
}

func (u *countingUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	u.count(r.Method)
	return u.Upstream.RoundTrip(r)
}

func (u *countingUpstream) sent(method string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[method]
}

// ledgerFailFixture is a proxy over an embedded registry whose ledger can be
// made to fail, with its settler running.
type ledgerFailFixture struct {
	*toolsFixture
	ledger  *faultyLedger
	counter *countingUpstream
}

func newLedgerFailFixture(t *testing.T) *ledgerFailFixture {
	t.Helper()
	dir := t.TempDir()
	reg, err := embedded.New(context.Background(), embedded.Options{Root: filepath.Join(dir, "registry")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Shutdown() })
	l, err := bolt.Open(filepath.Join(dir, "ledger.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	fl := &faultyLedger{Ledger: l}
	counter := &countingUpstream{Upstream: NewInProcess(reg.Handler()), seen: map[string]int{}}
	srv := New(Options{Upstream: counter, Ledger: fl, Immutability: policy.DefaultImmutability(), ReserveWait: 200 * time.Millisecond})
	ctx, stop := context.WithCancel(context.Background())
	settled := make(chan struct{})
	go func() {
		defer close(settled)
		srv.Reservations().Run(ctx, 50*time.Millisecond)
	}()
	t.Cleanup(func() { stop(); <-settled })
	return &ledgerFailFixture{toolsFixture: &toolsFixture{srv: srv, up: reg.Handler(), ledger: l}, ledger: fl, counter: counter}
}

// manifestOf stores a one-layer image in team/app under a scratch tag,
// bypassing taglock, and returns its manifest bytes.
func (f *ledgerFailFixture) manifestOf(t *testing.T, content string) []byte {
	t.Helper()
	d := f.pushDirect(t, "team/app", "s-"+content, content)
	req := httptest.NewRequest(http.MethodGet, "/v2/team/app/manifests/"+d.String(), nil)
	req.Header.Set("Accept", v1.MediaTypeImageManifest)
	rec := httptest.NewRecorder()
	f.up.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("get %s: %d", d, rec.Code)
	}
	return rec.Body.Bytes()
}

// send is one request through taglock.
func (f *ledgerFailFixture) send(t *testing.T, method, path string, body []byte) (int, string, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(string(body)))
	if body != nil {
		req.Header.Set("Content-Type", v1.MediaTypeImageManifest)
	}
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, req)
	var doc struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if rec.Code >= 400 {
		if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil || len(doc.Errors) == 0 {
			t.Fatalf("%s %s: %d with a body that is not an OCI error: %q", method, path, rec.Code, rec.Body)
		}
		return rec.Code, doc.Errors[0].Code, doc.Errors[0].Message
	}
	return rec.Code, "", ""
}

// TestLedgerThatCannotWriteRefusesWrites ensures that when the ledger cannot
// write (a full or read-only disk, simulated below the proxy), a manifest
// PUT of a tag is answered 503 with an OCI error and never reaches the
// registry, whether the write that fails is the reservation or the adoption
// of a tag found upstream; that deleting an immutable tag is still refused
// from the ledger's reads; and that the registry's tags are unchanged.
func TestLedgerThatCannotWriteRefusesWrites(t *testing.T) {
	t.Parallel()
	f := newLedgerFailFixture(t)
	v0, other := f.manifestOf(t, "zero"), f.manifestOf(t, "other")
	if code, _, msg := f.send(t, http.MethodPut, "/v2/team/app/manifests/v0", v0); code != http.StatusCreated {
		t.Fatalf("push v0 while the ledger works: %d %s", code, msg)
	}
	f.pushDirect(t, "team/app", "found", "found upstream") // unknown to the ledger
	f.ledger.failing(allWrites...)
	puts, deletes := f.counter.sent(http.MethodPut), f.counter.sent(http.MethodDelete)

	for _, c := range []struct {
		what, method, path string
		body               []byte
		status             int
		code               string
	}{
		{"a push of a new tag", http.MethodPut, "/v2/team/app/manifests/v1", other, 503, "UNAVAILABLE"},
		{"a push of a tag the ledger would adopt", http.MethodPut, "/v2/team/app/manifests/found", other, 503, "UNAVAILABLE"},
		{"a push moving v0", http.MethodPut, "/v2/team/app/manifests/v0", other, 403, "DENIED"},
		{"a delete of v0", http.MethodDelete, "/v2/team/app/manifests/v0", nil, 403, "DENIED"},
	} {
		code, ocicode, msg := f.send(t, c.method, c.path, c.body)
		if code != c.status || ocicode != c.code {
			t.Errorf("%s: %d %s (%s), want %d %s", c.what, code, ocicode, msg, c.status, c.code)
		}
		if code == http.StatusServiceUnavailable && !strings.Contains(msg, "nothing was changed") {
			t.Errorf("%s: message %q does not say nothing was changed", c.what, msg)
		}
	}
	if n := f.counter.sent(http.MethodPut) - puts; n != 0 {
		t.Errorf("%d manifest PUTs reached the registry, want none", n)
	}
	if n := f.counter.sent(http.MethodDelete) - deletes; n != 0 {
		t.Errorf("%d DELETEs reached the registry, want none", n)
	}
	for tag, want := range map[string]digest.Digest{"v0": digest.FromBytes(v0), "v1": ""} {
		if got := f.upstreamDigest(t, "team/app", tag); got != want {
			t.Errorf("the registry serves team/app:%s as %q, want %q", tag, got, want)
		}
	}
}

// TestPushUnrecordedAfterUpstreamHoldsTag ensures that when the ledger takes
// the reservation but cannot record the push after the registry accepted it
// (what a disk filling up between the two writes does), the client gets a
// 503 that says so rather than "nothing was changed", the reservation keeps
// the tag held so other content cannot take it meanwhile, and once the
// ledger writes again the settler records the tag with the digest the
// registry holds.
func TestPushUnrecordedAfterUpstreamHoldsTag(t *testing.T) {
	t.Parallel()
	f := newLedgerFailFixture(t)
	one, two := f.manifestOf(t, "one"), f.manifestOf(t, "two")
	f.ledger.failing("Commit")

	code, ocicode, msg := f.send(t, http.MethodPut, "/v2/team/app/manifests/v1", one)
	if code != http.StatusServiceUnavailable || ocicode != "UNAVAILABLE" || !strings.Contains(msg, "could not record it") || strings.Contains(msg, "nothing was changed") {
		t.Errorf("push whose commit failed: %d %s %q; want 503 UNAVAILABLE saying the registry has it but the ledger did not record it", code, ocicode, msg)
	}
	if got := f.upstreamDigest(t, "team/app", "v1"); got != digest.FromBytes(one) {
		t.Fatalf("the registry serves v1 as %q, want the pushed %s", got, digest.FromBytes(one))
	}
	if res, err := f.ledger.Reservations(t.Context()); err != nil || len(res) != 1 || res[0].Digest != digest.FromBytes(one) {
		t.Fatalf("reservations = %+v, %v; want the push's, holding v1", res, err)
	}
	// Other content for v1 meanwhile: taglock finds v1 on the registry,
	// adopts it and refuses (or, if it cannot even adopt, answers 503).
	puts := f.counter.sent(http.MethodPut)
	if code, ocicode, msg := f.send(t, http.MethodPut, "/v2/team/app/manifests/v1", two); code != http.StatusForbidden && code != http.StatusServiceUnavailable {
		t.Errorf("other content for the held tag: %d %s (%s), want it refused", code, ocicode, msg)
	}
	if f.counter.sent(http.MethodPut) != puts {
		t.Error("other content for the held tag reached the registry")
	}

	f.ledger.failing()
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := f.ledger.Reservations(t.Context())
		if err == nil && len(res) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reservation was not reconciled within 15s after the ledger healed: %+v, %v", res, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if b, err := f.ledger.Binding(t.Context(), "team/app", "v1"); err != nil || b.Digest != digest.FromBytes(one) {
		t.Errorf("v1 after reconciliation = %s, %v; want %s", b.Digest, err, digest.FromBytes(one))
	}
	if code, ocicode, msg := f.send(t, http.MethodPut, "/v2/team/app/manifests/v1", two); code != http.StatusForbidden || ocicode != "DENIED" {
		t.Errorf("moving the reconciled v1: %d %s (%s), want 403 DENIED", code, ocicode, msg)
	}
}
