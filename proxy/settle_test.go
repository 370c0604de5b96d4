package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// The settler (settle.go): a push or delete whose outcome taglock did not
// learn keeps what it touches held until the upstream shows what became of
// it, or until it can no longer land.

// settling is a proxy on a clock that stands still until the test moves it,
// so a reservation stays in doubt until the test says otherwise.
func settling(t *testing.T, steps ...exchange) (*Server, *script, *faultyLedger, *testClock) {
	clock := newTestClock()
	s, up, l := scriptedWith(t, Options{Immutability: policy.DefaultImmutability(), Now: clock.Now}, steps...)
	return s, up, l, clock
}

// pastDoubt is long enough after a request for it to be unable to land: its
// deadline (LookupTimeout) plus SettleMargin, with room.
const pastDoubt = 2 * time.Minute

// reconcile runs the settler once.
func reconcile(t *testing.T, s *Server) error {
	t.Helper()
	return s.Reservations().Reconcile(t.Context())
}

// TestSettlerCommitsAPushThatLanded: a 5xx after the upstream may have
// stored the manifest leaves the tag held; once the upstream shows the tag
// holding the pushed digest, the settler binds it as reconciled.
func TestSettlerCommitsAPushThatLanded(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, up, l, _ := settling(t,
		notThere(app+"/manifests/1.0"),
		exchange{method: "PUT", path: app + "/manifests/1.0", status: 500, body: `{"errors":[{"code":"UNKNOWN","message":"disk hiccup"}]}`})
	msg := refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusBadGateway, "UNAVAILABLE")
	if !strings.Contains(msg, "not known yet") || !strings.Contains(msg, "disk hiccup") {
		t.Errorf("message %q; want the outcome not known yet, with the upstream's own message", msg)
	}
	if res := pending(t, l); len(res) != 1 {
		t.Fatalf("reservations = %+v, want the push held", res)
	}

	up.expect(holds(app+"/manifests/1.0", m))
	if err := reconcile(t, s); err != nil {
		t.Fatal(err)
	}

	if b := bindingOf(t, l, "team/app", "1.0"); b.Digest != d || b.Mode != policy.Immutable || b.PushedBy != "anonymous (reconciled)" {
		t.Errorf("1.0 = %s %s by %s; want %s immutable by anonymous (reconciled)", b.Digest, b.Mode, b.PushedBy, d)
	}
	ev := historyIs(t, l, "team/app", "1.0", storage.EventAccepted)
	if len(ev) == 1 && !strings.Contains(ev[0].Message, "reconciled") {
		t.Errorf("event = %+v; want it marked reconciled", ev[0])
	}
	noneHeld(t, l)
}

// TestSettlerAsksWithTheRequestsCredentials: an upstream that checks the
// client's credentials shows the outcome only to them, so the settler asks
// with the credentials of the request whose outcome it settles.
func TestSettlerAsksWithTheRequestsCredentials(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, up, l, _ := settling(t,
		notThere(app+"/manifests/1.0"),
		unreachable("PUT", app+"/manifests/1.0"))
	refusedWith(t, serveAs(s, "alice", "PUT", app+"/manifests/1.0", m), http.StatusBadGateway, "UNAVAILABLE")

	lookup := holds(app+"/manifests/1.0", m)
	lookup.want = http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("alice:secret"))}}
	up.expect(lookup)
	if err := reconcile(t, s); err != nil {
		t.Fatal(err)
	}

	if b := bindingOf(t, l, "team/app", "1.0"); b.Digest != d || b.PushedBy != "alice (unverified) (reconciled)" {
		t.Errorf("1.0 = %s by %s; want %s by alice (unverified) (reconciled)", b.Digest, b.PushedBy, d)
	}
	noneHeld(t, l)
}

// TestSettlerReleasesAPushThatDidNotLand: while the push could still land, a
// tag the upstream does not show stays held; once it cannot, the
// reservation is released and the tag is free, with nothing recorded.
func TestSettlerReleasesAPushThatDidNotLand(t *testing.T) {
	t.Parallel()
	m, _ := testManifest("a")
	s, up, l, clock := settling(t,
		notThere(app+"/manifests/1.0"),
		unreachable("PUT", app+"/manifests/1.0"))
	refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusBadGateway, "UNAVAILABLE")

	up.expect(notThere(app + "/manifests/1.0"))
	if err := reconcile(t, s); err != nil {
		t.Fatal(err)
	}
	if res := pending(t, l); len(res) != 1 {
		t.Fatalf("reservations while the push may still land = %+v; want it held", res)
	}

	clock.advance(pastDoubt)
	up.expect(notThere(app + "/manifests/1.0"))
	if err := reconcile(t, s); err != nil {
		t.Fatal(err)
	}
	unbound(t, l, "team/app", "1.0")
	historyIs(t, l, "team/app", "1.0")
	noneHeld(t, l)
}

// TestSettlerDecidesNothingOnAPartialView: when the upstream shows one tag
// of a push and cannot be asked about the other, nothing is committed and
// the reservation stays.
func TestSettlerDecidesNothingOnAPartialView(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, up, l, _ := settling(t,
		notThere(app+"/manifests/a"),
		notThere(app+"/manifests/b"),
		unreachable("PUT", app+"/manifests/"+d.String()))
	refusedWith(t, serve(s, "PUT", app+"/manifests/"+d.String()+"?tag=a&tag=b", m), http.StatusBadGateway, "UNAVAILABLE")

	up.expect(holds(app+"/manifests/a", m), unreachable("GET", app+"/manifests/b"))
	if err := reconcile(t, s); !errors.Is(err, ErrLookup) {
		t.Errorf("reconcile = %v, want the failed lookup", err)
	}

	unbound(t, l, "team/app", "a")
	unbound(t, l, "team/app", "b")
	if res := pending(t, l); len(res) != 1 || res[0].Digest != d {
		t.Errorf("reservations = %+v; want the push of %s held", res, d)
	}
}

// TestSettlerKeepsAPushWhileTheUpstreamIsUnreachable: a push the upstream
// cannot be asked about stays held while it may still land; once it cannot,
// it is released rather than held for ever (a tag it did land is adopted by
// the next request that needs it).
func TestSettlerKeepsAPushWhileTheUpstreamIsUnreachable(t *testing.T) {
	t.Parallel()
	m, _ := testManifest("a")
	s, up, l, clock := settling(t,
		notThere(app+"/manifests/1.0"),
		unreachable("PUT", app+"/manifests/1.0"),
		unreachable("GET", app+"/manifests/1.0"))
	refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusBadGateway, "UNAVAILABLE")

	if err := reconcile(t, s); !errors.Is(err, ErrLookup) {
		t.Errorf("reconcile = %v, want the failed lookup", err)
	}
	if res := pending(t, l); len(res) != 1 {
		t.Fatalf("reservations = %+v; want the push held", res)
	}

	clock.advance(pastDoubt)
	up.expect(unreachable("GET", app+"/manifests/1.0"))
	if err := reconcile(t, s); err != nil {
		t.Errorf("reconcile once the push can no longer land = %v, want the reservation released", err)
	}
	unbound(t, l, "team/app", "1.0")
	noneHeld(t, l)
}

// TestSettlerRecordsADeleteThatHappened: a delete the upstream did not
// answer is recorded once the upstream no longer holds the tag.
func TestSettlerRecordsADeleteThatHappened(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, up, l, _ := settling(t,
		stores(app+"/manifests/latest", m),
		unreachable("DELETE", app+"/manifests/latest"))
	answered(t, serve(s, "PUT", app+"/manifests/latest", m), 201, d)
	refusedWith(t, serve(s, "DELETE", app+"/manifests/latest", ""), http.StatusBadGateway, "UNAVAILABLE")

	up.expect(exchange{method: "HEAD", path: app + "/manifests/latest", status: 404})
	if err := reconcile(t, s); err != nil {
		t.Fatal(err)
	}

	if b := bindingOf(t, l, "team/app", "latest"); !b.Deleted {
		t.Errorf("latest = %+v; want a tombstone", b)
	}
	ev := historyIs(t, l, "team/app", "latest", storage.EventAccepted, storage.EventDeleted)
	if len(ev) == 2 && (!strings.Contains(ev[1].Message, "reconciled") || ev[1].User != "anonymous") {
		t.Errorf("delete event = %+v; want it reconciled, by anonymous", ev[1])
	}
	noneHeld(t, l)
}

// TestSettlerReleasesADeleteThatDidNotHappen: a tag the upstream still holds
// stays held while the delete may still land, and once it cannot, the
// reservation is released and the tag stays live.
func TestSettlerReleasesADeleteThatDidNotHappen(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, up, l, clock := settling(t,
		stores(app+"/manifests/latest", m),
		unreachable("DELETE", app+"/manifests/latest"))
	answered(t, serve(s, "PUT", app+"/manifests/latest", m), 201, d)
	refusedWith(t, serve(s, "DELETE", app+"/manifests/latest", ""), http.StatusBadGateway, "UNAVAILABLE")

	still := exchange{method: "HEAD", path: app + "/manifests/latest", status: 200}
	up.expect(still)
	if err := reconcile(t, s); err != nil {
		t.Fatal(err)
	}
	if res := pending(t, l); len(res) != 1 || !res[0].IsDelete() {
		t.Fatalf("reservations while the delete may still land = %+v; want it held", res)
	}

	clock.advance(pastDoubt)
	up.expect(still)
	if err := reconcile(t, s); err != nil {
		t.Fatal(err)
	}
	if b := bindingOf(t, l, "team/app", "latest"); b.Deleted || b.Digest != d {
		t.Errorf("latest = %+v; want live on %s", b, d)
	}
	historyIs(t, l, "team/app", "latest", storage.EventAccepted)
	noneHeld(t, l)
}

// TestWritesResumeWhenAnotherProcessSettlesTheUnrecordedPush: replicas
// share a ledger (etcd), and any replica's settler may settle a reservation
// the process that made it left. Once another replica has recorded the push
// this process could not record, this process's writes go through again.
func TestWritesResumeWhenAnotherProcessSettlesTheUnrecordedPush(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	other, od := testManifest("b")
	s, up, l := scriptedWith(t, Options{Immutability: policy.DefaultImmutability()},
		notThere(app+"/manifests/1.0"),
		stores(app+"/manifests/1.0", m))
	l.failing("Commit") // this process's ledger connection fails a while
	refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusServiceUnavailable, "UNAVAILABLE")
	l.failing()

	replica := New(Options{Upstream: up, Ledger: l.Ledger, Immutability: policy.DefaultImmutability()})
	up.expect(holds(app+"/manifests/1.0", m))
	if err := reconcile(t, replica); err != nil {
		t.Fatal(err)
	}
	if b := bindingOf(t, l, "team/app", "1.0"); b.Digest != d {
		t.Fatalf("1.0 after the other replica settled it = %s, want %s", b.Digest, d)
	}

	if err := reconcile(t, s); err != nil {
		t.Fatal(err)
	}
	up.expect(notThere(app+"/manifests/2.0"), stores(app+"/manifests/2.0", other))
	answered(t, serve(s, "PUT", app+"/manifests/2.0", other), 201, od)
	noneHeld(t, l)
}

// lostCommit is a ledger whose next Commit is carried out but answers an
// error, as an etcd request that times out after its transaction applied.
type lostCommit struct {
	Ledger
	lose atomic.Bool
}

func (l *lostCommit) Commit(ctx context.Context, id string, bs []storage.Binding, evs []storage.Event, ms ...storage.Manifest) error {
	err := l.Ledger.Commit(ctx, id, bs, evs, ms...)
	if err == nil && l.lose.Swap(false) {
		return context.DeadlineExceeded
	}
	return err
}

// TestWritesResumeWhenTheUnrecordedPushWasRecordedAfterAll: a commit whose
// answer was lost may have been carried out; once the settler finds no
// reservation left to settle, writes go through again.
func TestWritesResumeWhenTheUnrecordedPushWasRecordedAfterAll(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	other, od := testManifest("b")
	_, up, l := scriptedWith(t, Options{},
		notThere(app+"/manifests/1.0"),
		stores(app+"/manifests/1.0", m))
	lost := &lostCommit{Ledger: l.Ledger}
	lost.lose.Store(true)
	s := New(Options{Upstream: up, Ledger: lost, Immutability: policy.DefaultImmutability()})

	refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusServiceUnavailable, "UNAVAILABLE")
	if b := bindingOf(t, l, "team/app", "1.0"); b.Digest != d {
		t.Fatalf("1.0 = %s, want %s: the commit was carried out", b.Digest, d)
	}
	noneHeld(t, l)

	if err := reconcile(t, s); err != nil {
		t.Fatal(err)
	}
	up.expect(notThere(app+"/manifests/2.0"), stores(app+"/manifests/2.0", other))
	answered(t, serve(s, "PUT", app+"/manifests/2.0", other), 201, od)
}
