package proxy

import (
	"bytes"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Pushes of a manifest by tag (push.go): each is decided on the tag's
// effective state, reserved, forwarded and then committed or released.

// TestPushBindsANewTag: a free tag is looked up on the upstream (it might
// predate taglock), the exact bytes are forwarded, and the 201 binds the tag
// with the mode and rule that decided it, the pusher, the manifest's
// closure and, for an immutable tag, its bytes.
func TestPushBindsANewTag(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, l := scripted(t,
		notThere(app+"/manifests/1.0"),
		stores(app+"/manifests/1.0", m))

	answered(t, serveAs(s, "alice", "PUT", app+"/manifests/1.0", m), 201, d)

	b := bindingOf(t, l, "team/app", "1.0")
	if b.Digest != d || b.Mode != policy.Immutable || b.Rule != "immutability.default" || b.PushedBy != "alice (unverified)" ||
		b.MediaType != "application/vnd.oci.image.manifest.v1+json" || b.Size != int64(len(m)) || !bytes.Equal(b.Manifest, []byte(m)) {
		t.Errorf("binding = %+v; want %s immutable by immutability.default, pushed by alice (unverified), with its bytes", b, d)
	}
	if want := []digest.Digest{digest.FromString("a/config"), digest.FromString("a/layer")}; !slices.Equal(b.Closure, want) {
		t.Errorf("closure = %v, want %v", b.Closure, want)
	}
	ev := historyIs(t, l, "team/app", "1.0", storage.EventAccepted)
	if len(ev) == 1 && (ev[0].Digest != d || ev[0].Previous != "" || ev[0].User != "alice (unverified)") {
		t.Errorf("event = %+v", ev[0])
	}
	if rec, err := l.Manifest(t.Context(), "team/app", d); err != nil || len(rec.Blobs) != 2 {
		t.Errorf("manifest record = %+v, %v; want its two blobs", rec, err)
	}
	noneHeld(t, l)
}

// TestPushMovingAnImmutableTagIsRefused: other content for a bound
// immutable tag is refused by taglock alone with 403 DENIED naming both
// digests, and the refusal is in the tag's history.
func TestPushMovingAnImmutableTagIsRefused(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	other, od := testManifest("b")
	s, _, l := scripted(t,
		notThere(app+"/manifests/1.0"),
		stores(app+"/manifests/1.0", m))
	answered(t, serve(s, "PUT", app+"/manifests/1.0", m), 201, d)

	w := serve(s, "PUT", app+"/manifests/1.0", other)
	msg := refusedWith(t, w, http.StatusForbidden, "DENIED")
	if !strings.Contains(msg, d.String()) || !strings.Contains(msg, od.String()) {
		t.Errorf("message %q does not name the bound %s and the refused %s", msg, d, od)
	}
	if w.Header().Get("Docker-Content-Digest") != "" {
		t.Errorf("a refusal carries Docker-Content-Digest %q", w.Header().Get("Docker-Content-Digest"))
	}

	if b := bindingOf(t, l, "team/app", "1.0"); b.Digest != d {
		t.Errorf("1.0 is bound to %s, want %s still", b.Digest, d)
	}
	ev := historyIs(t, l, "team/app", "1.0", storage.EventAccepted, storage.EventRefused)
	if len(ev) == 2 && (ev[1].Reason != ReasonTagMoved || ev[1].Digest != od || ev[1].Previous != d) {
		t.Errorf("refusal event = %+v", ev[1])
	}
	noneHeld(t, l)
}

// TestIdenticalRePushKeepsTheFirstRecord: the same bytes again are
// forwarded and accepted, whoever sends them, and the binding keeps who
// first pushed it and when.
func TestIdenticalRePushKeepsTheFirstRecord(t *testing.T) {
	t.Parallel()
	clock := newTestClock()
	m, d := testManifest("a")
	s, up, l := scriptedWith(t, Options{Immutability: policy.DefaultImmutability(), Now: clock.Now},
		notThere(app+"/manifests/1.0"),
		stores(app+"/manifests/1.0", m))
	answered(t, serveAs(s, "alice", "PUT", app+"/manifests/1.0", m), 201, d)
	first := bindingOf(t, l, "team/app", "1.0")

	clock.advance(time.Hour)
	up.expect(stores(app+"/manifests/1.0", m))
	answered(t, serveAs(s, "bob", "PUT", app+"/manifests/1.0", m), 201, d)

	if b := bindingOf(t, l, "team/app", "1.0"); b.Digest != d || !b.PushedAt.Equal(first.PushedAt) || b.PushedBy != "alice (unverified)" {
		t.Errorf("binding after the re-push = %s by %s at %v; want %s by alice (unverified) at %v", b.Digest, b.PushedBy, b.PushedAt, d, first.PushedAt)
	}
	ev := historyIs(t, l, "team/app", "1.0", storage.EventAccepted, storage.EventIdentical)
	if len(ev) == 2 && ev[1].User != "bob (unverified)" {
		t.Errorf("the identical event names %q, want the re-pusher bob (unverified)", ev[1].User)
	}
	noneHeld(t, l)
}

// TestMutableTagMoves: a mutable tag is never looked up on the upstream
// (nothing there can bind it), moves to whatever is pushed, and the move is
// in its history; its binding keeps no manifest bytes.
func TestMutableTagMoves(t *testing.T) {
	t.Parallel()
	m1, d1 := testManifest("a")
	m2, d2 := testManifest("b")
	s, _, l := scripted(t,
		stores(app+"/manifests/latest", m1),
		stores(app+"/manifests/latest", m2))

	answered(t, serve(s, "PUT", app+"/manifests/latest", m1), 201, d1)
	answered(t, serve(s, "PUT", app+"/manifests/latest", m2), 201, d2)

	if b := bindingOf(t, l, "team/app", "latest"); b.Digest != d2 || b.Mode != policy.Mutable || b.Manifest != nil {
		t.Errorf("latest = %s %s with %d manifest bytes; want %s mutable without bytes", b.Digest, b.Mode, len(b.Manifest), d2)
	}
	ev := historyIs(t, l, "team/app", "latest", storage.EventAccepted, storage.EventMoved)
	if len(ev) == 2 && (ev[1].Previous != d1 || ev[1].Digest != d2) {
		t.Errorf("move event = %+v; want %s to %s", ev[1], d1, d2)
	}
	noneHeld(t, l)
}

// TestWarnTagMoveIsAllowedAndWarned: a warn-mode tag moves like a mutable
// one, but the move is recorded as a warning naming what immutable mode
// would have refused.
func TestWarnTagMoveIsAllowedAndWarned(t *testing.T) {
	t.Parallel()
	m1, d1 := testManifest("a")
	m2, d2 := testManifest("b")
	s, _, l := scriptedWith(t, Options{Immutability: testRules()},
		notThere(app+"/manifests/edge"),
		stores(app+"/manifests/edge", m1),
		stores(app+"/manifests/edge", m2))

	answered(t, serve(s, "PUT", app+"/manifests/edge", m1), 201, d1)
	answered(t, serve(s, "PUT", app+"/manifests/edge", m2), 201, d2)

	if b := bindingOf(t, l, "team/app", "edge"); b.Digest != d2 || b.Mode != policy.Warn || b.Rule != "edge" {
		t.Errorf("edge = %s %s by %s; want %s warn by rule edge", b.Digest, b.Mode, b.Rule, d2)
	}
	ev := historyIs(t, l, "team/app", "edge", storage.EventAccepted, storage.EventWarned)
	if len(ev) == 2 && (ev[1].Reason != ReasonTagMoved || ev[1].Previous != d1 || ev[1].Digest != d2 || !strings.Contains(ev[1].Message, "warn mode")) {
		t.Errorf("warning = %+v", ev[1])
	}
	noneHeld(t, l)
}

// TestPushByDigestBindsNothing: a manifest pushed by digest alone is
// forwarded without a lookup or a reservation, binds no tag, and is recorded
// only as part of the graph later tags and deletes consult.
func TestPushByDigestBindsNothing(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, l := scripted(t, stores(app+"/manifests/"+d.String(), m))

	answered(t, serve(s, "PUT", app+"/manifests/"+d.String(), m), 201, d)

	if bs, err := l.Bindings(t.Context(), "team/app"); err != nil || len(bs) != 0 {
		t.Errorf("bindings = %+v, %v; want none", bs, err)
	}
	if rec, err := l.Manifest(t.Context(), "team/app", d); err != nil || len(rec.Blobs) != 2 {
		t.Errorf("manifest record = %+v, %v; want its two blobs", rec, err)
	}
	historyIs(t, l, "team/app", "")
	noneHeld(t, l)
}

// TestPushWithTagParameters: a push by digest with ?tag= (OCI 1.1) decides
// and reserves every tag, forwards the parameters, and binds the tags the
// upstream says it applied.
func TestPushWithTagParameters(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	put := stores(app+"/manifests/"+d.String(), m)
	put.query = "tag=v2&tag=v1"
	put.header = http.Header{"Docker-Content-Digest": {d.String()}, "Oci-Tag": {"v1, v2"}}
	s, _, l := scripted(t,
		notThere(app+"/manifests/v1"),
		notThere(app+"/manifests/v2"),
		put)

	w := serve(s, "PUT", app+"/manifests/"+d.String()+"?tag=v2&tag=v1", m)
	answered(t, w, 201, d)
	if got := w.Header().Get("OCI-Tag"); got != "v1, v2" {
		t.Errorf("OCI-Tag %q, want the upstream's", got)
	}

	for _, tag := range []string{"v1", "v2"} {
		if b := bindingOf(t, l, "team/app", tag); b.Digest != d || b.Mode != policy.Immutable {
			t.Errorf("%s = %s %s, want %s immutable", tag, b.Digest, b.Mode, d)
		}
		historyIs(t, l, "team/app", tag, storage.EventAccepted)
	}
	noneHeld(t, l)
}

// TestPushWithTagParametersBindsOnlyWhatTheUpstreamApplied: a registry that
// ignores ?tag= names no OCI-Tag, and then no tag is bound and none stays
// held.
func TestPushWithTagParametersBindsOnlyWhatTheUpstreamApplied(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	put := stores(app+"/manifests/"+d.String(), m)
	put.query = "tag=v1"
	s, _, l := scripted(t, notThere(app+"/manifests/v1"), put)

	answered(t, serve(s, "PUT", app+"/manifests/"+d.String()+"?tag=v1", m), 201, d)

	unbound(t, l, "team/app", "v1")
	historyIs(t, l, "team/app", "v1")
	noneHeld(t, l)
}

// TestPushWithTagParametersIsRefusedWhole: when one of the tags would move
// an immutable tag, the whole push is refused before anything is forwarded,
// and the other tags stay free.
func TestPushWithTagParametersIsRefusedWhole(t *testing.T) {
	t.Parallel()
	m0, d0 := testManifest("zero")
	m, d := testManifest("a")
	s, up, l := scripted(t,
		notThere(app+"/manifests/b"),
		stores(app+"/manifests/b", m0))
	answered(t, serve(s, "PUT", app+"/manifests/b", m0), 201, d0)

	up.expect(notThere(app + "/manifests/a")) // a is decided first, and is free
	refusedWith(t, serve(s, "PUT", app+"/manifests/"+d.String()+"?tag=a&tag=b", m), http.StatusForbidden, "DENIED")

	unbound(t, l, "team/app", "a")
	if b := bindingOf(t, l, "team/app", "b"); b.Digest != d0 {
		t.Errorf("b = %s, want %s still", b.Digest, d0)
	}
	historyIs(t, l, "team/app", "b", storage.EventAccepted, storage.EventRefused)
	noneHeld(t, l)
}

// TestPushOfAnIndexWalksItsChildren: the children of an index the ledger
// has never seen are read from the upstream, what they reference is checked
// to be there (the registry checks only an index's own references), and the
// binding's closure holds the whole graph, whose records the ledger keeps.
func TestPushOfAnIndexWalksItsChildren(t *testing.T) {
	t.Parallel()
	amd, amdD := testManifest("amd64")
	arm, armD := testManifest("arm64")
	idx, d := indexManifest(amd, arm)
	var steps []exchange
	steps = append(steps, anyOrder(holds(app+"/manifests/"+amdD.String(), amd), holds(app+"/manifests/"+armD.String(), arm))...)
	steps = append(steps, notThere(app+"/manifests/1.0"))
	var blobs []exchange
	for _, b := range []string{"amd64/config", "amd64/layer", "arm64/config", "arm64/layer"} {
		blobs = append(blobs, exchange{method: "HEAD", path: app + "/blobs/" + digest.FromString(b).String(), status: 200})
	}
	steps = append(steps, anyOrder(blobs...)...)
	steps = append(steps, stores(app+"/manifests/1.0", idx))
	s, _, l := scripted(t, steps...)

	answered(t, serve(s, "PUT", app+"/manifests/1.0", idx), 201, d)

	b := bindingOf(t, l, "team/app", "1.0")
	want := []digest.Digest{amdD, armD}
	for _, b := range []string{"amd64/config", "amd64/layer", "arm64/config", "arm64/layer"} {
		want = append(want, digest.FromString(b))
	}
	if b.Digest != d || !sameSet(b.Closure, want) {
		t.Errorf("binding %s with closure %v; want %s with %v", b.Digest, b.Closure, d, want)
	}
	for _, c := range []digest.Digest{d, amdD, armD} {
		if _, err := l.Manifest(t.Context(), "team/app", c); err != nil {
			t.Errorf("manifest record of %s: %v", c, err)
		}
	}
	noneHeld(t, l)
}

// TestPushOfAnIndexWhoseChildLostALayerIsRefused: a tag binds only a graph
// that pulls whole; when a child's layer is gone the push is refused with 400
// MANIFEST_BLOB_UNKNOWN naming it, nothing is forwarded and the tag is free.
func TestPushOfAnIndexWhoseChildLostALayerIsRefused(t *testing.T) {
	t.Parallel()
	amd, amdD := testManifest("amd64")
	idx, _ := indexManifest(amd)
	layer := digest.FromString("amd64/layer")
	steps := []exchange{holds(app+"/manifests/"+amdD.String(), amd), notThere(app + "/manifests/1.0")}
	steps = append(steps, anyOrder(
		exchange{method: "HEAD", path: app + "/blobs/" + digest.FromString("amd64/config").String(), status: 200},
		exchange{method: "HEAD", path: app + "/blobs/" + layer.String(), status: 404})...)
	s, _, l := scripted(t, steps...)

	msg := refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", idx), http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN")
	if !strings.Contains(msg, layer.String()) {
		t.Errorf("message %q does not name the missing layer %s", msg, layer)
	}
	unbound(t, l, "team/app", "1.0")
	noneHeld(t, l)
}

// TestPushOfAnIndexNamingAMissingChildIsTheUpstreamsCall: a child the
// upstream does not have has nothing below it to check; whether an index may
// name it is the upstream's decision, whose refusal is relayed as it is.
func TestPushOfAnIndexNamingAMissingChildIsTheUpstreamsCall(t *testing.T) {
	t.Parallel()
	amd, amdD := testManifest("amd64")
	idx, _ := indexManifest(amd)
	refusal := `{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"}]}`
	s, _, l := scripted(t,
		notThere(app+"/manifests/"+amdD.String()),
		notThere(app+"/manifests/1.0"),
		exchange{method: "PUT", path: app + "/manifests/1.0", sent: idx, status: 400, body: refusal})

	w := serve(s, "PUT", app+"/manifests/1.0", idx)
	refusedWith(t, w, http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN")
	if w.Body.String() != refusal {
		t.Errorf("body %q, want the upstream's %q", w.Body, refusal)
	}
	unbound(t, l, "team/app", "1.0")
	noneHeld(t, l)
}

// TestPushRefusedByTheUpstreamFreesTheTag: a definite refusal (4xx) releases
// the reservation: nothing is bound and other content may take the tag.
func TestPushRefusedByTheUpstreamFreesTheTag(t *testing.T) {
	t.Parallel()
	m, _ := testManifest("a")
	other, od := testManifest("b")
	s, up, l := scripted(t,
		notThere(app+"/manifests/1.0"),
		exchange{method: "PUT", path: app + "/manifests/1.0", status: 400,
			body: `{"errors":[{"code":"MANIFEST_INVALID","message":"bad config"}]}`})

	refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusBadRequest, "MANIFEST_INVALID")
	unbound(t, l, "team/app", "1.0")
	noneHeld(t, l)

	up.expect(notThere(app+"/manifests/1.0"), stores(app+"/manifests/1.0", other))
	answered(t, serve(s, "PUT", app+"/manifests/1.0", other), 201, od)
	if b := bindingOf(t, l, "team/app", "1.0"); b.Digest != od {
		t.Errorf("1.0 = %s, want %s", b.Digest, od)
	}
}

// TestPushTheUpstreamDidNotAnswerHoldsTheTag: when the PUT gets no answer
// the push may or may not have landed: the client is told so with 502, the
// reservation stays for the settler, and a push of other content to the tag
// is refused (after its wait) without reaching the upstream.
func TestPushTheUpstreamDidNotAnswerHoldsTheTag(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	other, _ := testManifest("b")
	s, up, l := scriptedWith(t, Options{Immutability: policy.DefaultImmutability(), ReserveWait: time.Nanosecond},
		notThere(app+"/manifests/1.0"),
		unreachable("PUT", app+"/manifests/1.0"))

	msg := refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusBadGateway, "UNAVAILABLE")
	if !strings.Contains(msg, "did not answer") || !strings.Contains(msg, "not known yet") {
		t.Errorf("message %q does not say the outcome is not known yet", msg)
	}
	unbound(t, l, "team/app", "1.0")
	res := pending(t, l)
	if len(res) != 1 || res[0].Digest != d || !slices.Equal(res[0].Tags, []string{"1.0"}) || res[0].IsDelete() {
		t.Fatalf("reservations = %+v; want the push of %s to 1.0 held", res, d)
	}

	up.expect(notThere(app + "/manifests/1.0")) // it has not landed (yet)
	w := serve(s, "PUT", app+"/manifests/1.0", other)
	msg = refusedWith(t, w, http.StatusServiceUnavailable, "UNAVAILABLE")
	if !strings.Contains(msg, "earlier push of "+d.String()) || !strings.Contains(msg, "nothing was changed") || w.Header().Get("Retry-After") == "" {
		t.Errorf("other content meanwhile: %q (Retry-After %q); want it held by the earlier push, to retry", msg, w.Header().Get("Retry-After"))
	}
	unbound(t, l, "team/app", "1.0")
	if res := pending(t, l); len(res) != 1 {
		t.Errorf("reservations = %+v; want the first push's alone", res)
	}
}

// TestPushRetriedAfterAnUnknownOutcome: the same push again, as the 502
// advises, shares the held tag and goes through; the settler then finds the
// tag holds what both pushed.
func TestPushRetriedAfterAnUnknownOutcome(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, up, l := scripted(t,
		notThere(app+"/manifests/1.0"),
		unreachable("PUT", app+"/manifests/1.0"),
		notThere(app+"/manifests/1.0"),
		stores(app+"/manifests/1.0", m))
	refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusBadGateway, "UNAVAILABLE")

	answered(t, serve(s, "PUT", app+"/manifests/1.0", m), 201, d)
	if b := bindingOf(t, l, "team/app", "1.0"); b.Digest != d {
		t.Errorf("1.0 = %s, want %s", b.Digest, d)
	}
	if res := pending(t, l); len(res) != 1 {
		t.Fatalf("reservations = %+v; want the first push's, for the settler", res)
	}

	up.expect(holds(app+"/manifests/1.0", m))
	if err := s.Reservations().Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	historyIs(t, l, "team/app", "1.0", storage.EventAccepted, storage.EventIdentical)
	noneHeld(t, l)
}

// TestPushTheUpstreamAnsweredWithAnotherDigest: a 201 naming a digest other
// than that of the bytes sent binds nothing: the outcome is left to the
// settler, which will see what the tag holds.
func TestPushTheUpstreamAnsweredWithAnotherDigest(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	_, od := testManifest("b")
	s, _, l := scripted(t,
		notThere(app+"/manifests/1.0"),
		exchange{method: "PUT", path: app + "/manifests/1.0", sent: m, status: 201, header: created(od)})

	msg := refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusBadGateway, "UNAVAILABLE")
	if !strings.Contains(msg, od.String()) || !strings.Contains(msg, d.String()) {
		t.Errorf("message %q does not name both digests", msg)
	}
	unbound(t, l, "team/app", "1.0")
	if res := pending(t, l); len(res) != 1 || res[0].Digest != d {
		t.Errorf("reservations = %+v; want the push of %s held", res, d)
	}
}

// TestPushFailsClosedWhenTheLedgerCannotReserve: a ledger that cannot take
// the reservation refuses the push with 503 before anything is forwarded.
func TestPushFailsClosedWhenTheLedgerCannotReserve(t *testing.T) {
	t.Parallel()
	m, _ := testManifest("a")
	s, _, l := scriptedWith(t, Options{Immutability: policy.DefaultImmutability()},
		notThere(app+"/manifests/1.0"))
	l.failing("Reserve")

	msg := refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusServiceUnavailable, "UNAVAILABLE")
	if !strings.Contains(msg, "nothing was changed") {
		t.Errorf("message %q does not say nothing was changed", msg)
	}
	unbound(t, l, "team/app", "1.0")
	historyIs(t, l, "team/app", "1.0")
	noneHeld(t, l)
}

// TestPushTheLedgerCouldNotRecordHoldsWrites: when the upstream took a push
// the ledger then could not record, the client is told so, the tag stays
// held, and every write is refused before it reaches the upstream until the
// settler has recorded it.
func TestPushTheLedgerCouldNotRecordHoldsWrites(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	other, od := testManifest("b")
	s, up, l := scriptedWith(t, Options{Immutability: policy.DefaultImmutability()},
		notThere(app+"/manifests/1.0"),
		stores(app+"/manifests/1.0", m))
	l.failing("Commit")

	msg := refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusServiceUnavailable, "UNAVAILABLE")
	if !strings.Contains(msg, "could not record it") {
		t.Errorf("message %q does not say the ledger could not record it", msg)
	}
	if res := pending(t, l); len(res) != 1 || res[0].Digest != d {
		t.Fatalf("reservations = %+v; want the push of %s held", res, d)
	}
	l.failing() // the ledger writes again, but nothing has recorded 1.0 yet
	refusedWith(t, serve(s, "PUT", app+"/manifests/2.0", other), http.StatusServiceUnavailable, "UNAVAILABLE")
	refusedWith(t, serve(s, "DELETE", app+"/manifests/latest", ""), http.StatusServiceUnavailable, "UNAVAILABLE")

	up.expect(holds(app+"/manifests/1.0", m))
	if err := s.Reservations().Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	if b := bindingOf(t, l, "team/app", "1.0"); b.Digest != d {
		t.Errorf("1.0 after the settle = %s, want %s", b.Digest, d)
	}
	up.expect(notThere(app+"/manifests/2.0"), stores(app+"/manifests/2.0", other))
	answered(t, serve(s, "PUT", app+"/manifests/2.0", other), 201, od)
	noneHeld(t, l)
}

// TestPushWhoseBodyIsNotTheURLDigest: a push by digest whose bytes hash to
// another digest is refused with 400 DIGEST_INVALID and never forwarded.
func TestPushWhoseBodyIsNotTheURLDigest(t *testing.T) {
	t.Parallel()
	m, _ := testManifest("a")
	_, od := testManifest("b")
	s, _, l := scripted(t)

	refusedWith(t, serve(s, "PUT", app+"/manifests/"+od.String()+"?tag=1.0", m), http.StatusBadRequest, "DIGEST_INVALID")

	unbound(t, l, "team/app", "1.0")
	if _, err := l.Manifest(t.Context(), "team/app", od); err == nil {
		t.Error("the ledger recorded a manifest for the URL's digest")
	}
	noneHeld(t, l)
}

// promoted is a proxy whose prod/ repositories only take digests that the
// same tag holds under staging/.
func promoted(t *testing.T, steps ...exchange) (*Server, *script, *faultyLedger) {
	return scriptedWith(t, Options{Immutability: policy.DefaultImmutability(),
		Promotion: []policy.PromotionRule{{Name: "prod", Into: "prod/", From: "staging/", Require: policy.SameTag}}}, steps...)
}

// TestPromotionGuardRefusesWhatWasNotStaged: a tag write into a guarded
// repository of a digest the source's tag does not hold is refused with 403
// DENIED before anything is forwarded, and recorded as not-promoted.
func TestPromotionGuardRefusesWhatWasNotStaged(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, l := promoted(t, notThere("/v2/prod/app/manifests/1.0"))

	msg := refusedWith(t, serve(s, "PUT", "/v2/prod/app/manifests/1.0", m), http.StatusForbidden, "DENIED")
	if !strings.Contains(msg, "staging/app") {
		t.Errorf("message %q does not name the source staging/app", msg)
	}
	unbound(t, l, "prod/app", "1.0")
	ev := historyIs(t, l, "prod/app", "1.0", storage.EventRefused)
	if len(ev) == 1 && (ev[0].Reason != ReasonNotPromoted || ev[0].Digest != d) {
		t.Errorf("refusal = %+v", ev[0])
	}
	noneHeld(t, l)
}

// TestPromotionGuardAllowsWhatWasStaged: once staging/app:1.0 holds the
// digest, prod/app:1.0 takes it.
func TestPromotionGuardAllowsWhatWasStaged(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, l := promoted(t,
		notThere("/v2/staging/app/manifests/1.0"),
		stores("/v2/staging/app/manifests/1.0", m),
		notThere("/v2/prod/app/manifests/1.0"),
		stores("/v2/prod/app/manifests/1.0", m))

	answered(t, serve(s, "PUT", "/v2/staging/app/manifests/1.0", m), 201, d)
	answered(t, serve(s, "PUT", "/v2/prod/app/manifests/1.0", m), 201, d)

	if b := bindingOf(t, l, "prod/app", "1.0"); b.Digest != d {
		t.Errorf("prod/app:1.0 = %s, want %s", b.Digest, d)
	}
	noneHeld(t, l)
}

// sameSet reports whether a and b hold the same digests.
func sameSet(a, b []digest.Digest) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
