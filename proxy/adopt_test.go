package proxy

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Adoption (adopt.go): a tag the upstream holds that the ledger never saw
// (it predates taglock, or was pushed around it) is recorded before a push or
// a delete by digest is decided, so it is protected too.

// TestPushAdoptsAnUpstreamTagBeforeDeciding: the upstream's 1.0 is recorded
// as the binding, with its configured mode and bytes, and the push of other
// content to it is then refused like any move of an immutable tag.
func TestPushAdoptsAnUpstreamTagBeforeDeciding(t *testing.T) {
	t.Parallel()
	m0, d0 := testManifest("zero")
	m, _ := testManifest("a")
	s, _, l := scripted(t, holds(app+"/manifests/1.0", m0))

	msg := refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusForbidden, "DENIED")
	if !strings.Contains(msg, d0.String()) {
		t.Errorf("message %q does not name the adopted %s", msg, d0)
	}

	b := bindingOf(t, l, "team/app", "1.0")
	if b.Digest != d0 || b.Mode != policy.Immutable || b.Rule != "immutability.default" || b.PushedBy != "upstream (adopted)" ||
		!bytes.Equal(b.Manifest, []byte(m0)) || !sameSet(b.Closure, []digest.Digest{digest.FromString("zero/config"), digest.FromString("zero/layer")}) {
		t.Errorf("adopted binding = %+v; want %s immutable, by upstream (adopted), with its bytes and closure", b, d0)
	}
	ev := historyIs(t, l, "team/app", "1.0", storage.EventAdopted, storage.EventRefused)
	if len(ev) == 2 && (ev[0].Digest != d0 || ev[1].Previous != d0) {
		t.Errorf("history = %+v", ev)
	}
	noneHeld(t, l)
}

// TestAdoptionRecordsTheConfiguredMode: a warn-mode tag found upstream is
// adopted in warn mode, so a push of other content moves it with a warning.
func TestAdoptionRecordsTheConfiguredMode(t *testing.T) {
	t.Parallel()
	m0, d0 := testManifest("zero")
	m, d := testManifest("a")
	s, _, l := scriptedWith(t, Options{Immutability: testRules()},
		holds(app+"/manifests/edge", m0),
		stores(app+"/manifests/edge", m))

	answered(t, serve(s, "PUT", app+"/manifests/edge", m), 201, d)

	if b := bindingOf(t, l, "team/app", "edge"); b.Digest != d || b.Mode != policy.Warn {
		t.Errorf("edge = %s %s, want %s warn", b.Digest, b.Mode, d)
	}
	ev := historyIs(t, l, "team/app", "edge", storage.EventAdopted, storage.EventWarned)
	if len(ev) == 2 && (ev[0].Digest != d0 || ev[1].Previous != d0) {
		t.Errorf("history = %+v", ev)
	}
	noneHeld(t, l)
}

// TestPushOfTheAdoptedDigestIsIdentical: a push of what the upstream's tag
// already holds is adopted and then accepted as an identical re-push, which
// keeps the adopted record.
func TestPushOfTheAdoptedDigestIsIdentical(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, l := scripted(t,
		holds(app+"/manifests/1.0", m),
		stores(app+"/manifests/1.0", m))

	answered(t, serve(s, "PUT", app+"/manifests/1.0", m), 201, d)

	if b := bindingOf(t, l, "team/app", "1.0"); b.Digest != d || b.PushedBy != "upstream (adopted)" {
		t.Errorf("1.0 = %s by %s; want %s by upstream (adopted)", b.Digest, b.PushedBy, d)
	}
	historyIs(t, l, "team/app", "1.0", storage.EventAdopted, storage.EventIdentical)
	noneHeld(t, l)
}

// TestAdoptionLookupFailureRefusesThePush: when the upstream cannot say
// whether it holds the tag, the push is refused with 502, nothing is
// forwarded and nothing is recorded.
func TestAdoptionLookupFailureRefusesThePush(t *testing.T) {
	t.Parallel()
	m, _ := testManifest("a")
	for _, c := range []struct {
		what   string
		lookup exchange
	}{
		{"answered 500", exchange{method: "GET", path: app + "/manifests/1.0", status: 500}},
		{"unreachable", unreachable("GET", app+"/manifests/1.0")},
		{"answered a manifest that does not parse", exchange{method: "GET", path: app + "/manifests/1.0", status: 200, body: "{not json"}},
	} {
		t.Run(c.what, func(t *testing.T) {
			t.Parallel()
			s, _, l := scripted(t, c.lookup)

			msg := refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusBadGateway, "UNAVAILABLE")
			if !strings.Contains(msg, "required lookup") || !strings.Contains(msg, "nothing was changed") {
				t.Errorf("message %q; want a failed lookup that changed nothing", msg)
			}
			unbound(t, l, "team/app", "1.0")
			historyIs(t, l, "team/app", "")
			noneHeld(t, l)
		})
	}
}

// TestAdoptionLookupChallengeIsRelayed: the lookup is made with the client's
// credentials, so an upstream's 401 is the client's to answer: it is relayed
// as it is, and nothing is forwarded or recorded.
func TestAdoptionLookupChallengeIsRelayed(t *testing.T) {
	t.Parallel()
	m, _ := testManifest("a")
	const challenge = `Bearer realm="https://auth.example/token",scope="repository:team/app:pull"`
	body := `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`
	s, _, l := scripted(t, exchange{method: "GET", path: app + "/manifests/1.0", status: 401, body: body,
		header: http.Header{"Www-Authenticate": {challenge}, "Content-Type": {"application/json"}}})

	w := serve(s, "PUT", app+"/manifests/1.0", m)
	refusedWith(t, w, http.StatusUnauthorized, "UNAUTHORIZED")
	if w.Header().Get("WWW-Authenticate") != challenge || w.Body.String() != body {
		t.Errorf("answer %q with challenge %q; want the upstream's", w.Body, w.Header().Get("WWW-Authenticate"))
	}
	unbound(t, l, "team/app", "1.0")
	noneHeld(t, l)
}

// TestWarnTagPushGoesOnWhenTheLookupFails: warn mode never refuses, so a
// failed lookup cannot make it allow what it should not; the push goes on.
func TestWarnTagPushGoesOnWhenTheLookupFails(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, l := scriptedWith(t, Options{Immutability: testRules()},
		exchange{method: "GET", path: app + "/manifests/edge", status: 500},
		stores(app+"/manifests/edge", m))

	answered(t, serve(s, "PUT", app+"/manifests/edge", m), 201, d)

	if b := bindingOf(t, l, "team/app", "edge"); b.Digest != d || b.Mode != policy.Warn {
		t.Errorf("edge = %s %s, want %s warn", b.Digest, b.Mode, d)
	}
	historyIs(t, l, "team/app", "edge", storage.EventAccepted)
	noneHeld(t, l)
}

// TestAdoptionTheLedgerCannotRecordRefusesThePush: a tag found upstream
// that cannot be recorded is not decided on: 503, nothing forwarded.
func TestAdoptionTheLedgerCannotRecordRefusesThePush(t *testing.T) {
	t.Parallel()
	m0, _ := testManifest("zero")
	m, _ := testManifest("a")
	s, _, l := scriptedWith(t, Options{Immutability: policy.DefaultImmutability()}, holds(app+"/manifests/1.0", m0))
	l.failing("Put")

	refusedWith(t, serve(s, "PUT", app+"/manifests/1.0", m), http.StatusServiceUnavailable, "UNAVAILABLE")

	unbound(t, l, "team/app", "1.0")
	noneHeld(t, l)
}

// TestDeleteByDigestAdoptsTheUpstreamsTags: before a delete by digest is
// decided, every upstream tag the ledger never saw is adopted, so a manifest
// an unrecorded immutable tag points to is protected too.
func TestDeleteByDigestAdoptsTheUpstreamsTags(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, l := scripted(t,
		tagList("team/app", "1.0"),
		holds(app+"/manifests/1.0", m))

	refusedWith(t, serve(s, "DELETE", app+"/manifests/"+d.String(), ""), http.StatusForbidden, "DENIED")

	if b := bindingOf(t, l, "team/app", "1.0"); b.Digest != d || b.PushedBy != "upstream (adopted)" {
		t.Errorf("1.0 = %s by %s; want %s adopted", b.Digest, b.PushedBy, d)
	}
	historyIs(t, l, "team/app", "1.0", storage.EventAdopted, storage.EventRefused)
	noneHeld(t, l)
}

// TestDeleteByDigestFailsClosedWhenTheTagListFails: without the upstream's
// tag list taglock cannot know what the delete would remove: 502, nothing
// forwarded.
func TestDeleteByDigestFailsClosedWhenTheTagListFails(t *testing.T) {
	t.Parallel()
	_, d := testManifest("a")
	s, _, l := scripted(t, exchange{method: "GET", path: app + "/tags/list", query: "n=1000", status: 503})

	refusedWith(t, serve(s, "DELETE", app+"/manifests/"+d.String(), ""), http.StatusBadGateway, "UNAVAILABLE")

	historyIs(t, l, "team/app", "")
	noneHeld(t, l)
}

// TestDeleteByDigestStopsOnATagListThatRepeats: an upstream that ignores
// ?last= answers every page with the first one; taglock cannot see the
// rest of the tags, so the delete fails closed at once rather than asking
// for the same page again and again.
func TestDeleteByDigestStopsOnATagListThatRepeats(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	page := tagList("team/app", "latest")
	page.header = http.Header{"Link": {`</v2/team/app/tags/list?n=1000&last=latest>; rel="next"`}}
	again := page
	again.query = "last=latest&n=1000"
	s, up, l := scripted(t, stores(app+"/manifests/latest", m))
	answered(t, serve(s, "PUT", app+"/manifests/latest", m), 201, d)

	up.expect(page, again)
	refusedWith(t, serve(s, "DELETE", app+"/manifests/"+d.String(), ""), http.StatusBadGateway, "UNAVAILABLE")

	if b := bindingOf(t, l, "team/app", "latest"); b.Deleted {
		t.Errorf("latest = %+v; want live", b)
	}
	noneHeld(t, l)
}
