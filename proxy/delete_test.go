package proxy

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// Deletes of a tag, a manifest or a blob (delete.go): each is decided on the
// ledger's bindings, reserved, forwarded and recorded, and never reaches the
// upstream when it would remove or break an immutable tag.

// TestDeleteOfAnImmutableTagIsRefused: deleting an immutable tag is refused
// with 403 DENIED without a word to the upstream, whether the ledger has
// bound the tag or never seen it (its mode comes from the configuration),
// and the refusal is in the tag's history.
func TestDeleteOfAnImmutableTagIsRefused(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, l := scripted(t,
		notThere(app+"/manifests/1.0"),
		stores(app+"/manifests/1.0", m))
	answered(t, serve(s, "PUT", app+"/manifests/1.0", m), 201, d)

	msg := refusedWith(t, serve(s, "DELETE", app+"/manifests/1.0", ""), http.StatusForbidden, "DENIED")
	if !strings.Contains(msg, "stays bound to "+d.String()) {
		t.Errorf("message %q does not say 1.0 stays bound to %s", msg, d)
	}
	refusedWith(t, serve(s, "DELETE", app+"/manifests/2.0", ""), http.StatusForbidden, "DENIED")

	if b := bindingOf(t, l, "team/app", "1.0"); b.Deleted || b.Digest != d {
		t.Errorf("1.0 = %+v; want live on %s", b, d)
	}
	ev := historyIs(t, l, "team/app", "1.0", storage.EventAccepted, storage.EventRefused)
	if len(ev) == 2 && ev[1].Reason != ReasonTagDeleted {
		t.Errorf("refusal = %+v", ev[1])
	}
	unbound(t, l, "team/app", "2.0") // refused on its configured mode; not adopted
	historyIs(t, l, "team/app", "2.0", storage.EventRefused)
	noneHeld(t, l)
}

// TestDeleteOfAMutableTagIsTombstoned: a delete of a mutable tag is
// forwarded, and its binding becomes a tombstone, recorded in its history,
// in the write that ends the reservation.
func TestDeleteOfAMutableTagIsTombstoned(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, l := scripted(t,
		stores(app+"/manifests/latest", m),
		exchange{method: "DELETE", path: app + "/manifests/latest", status: 202})
	answered(t, serve(s, "PUT", app+"/manifests/latest", m), 201, d)

	answered(t, serve(s, "DELETE", app+"/manifests/latest", ""), 202, "")

	if b := bindingOf(t, l, "team/app", "latest"); !b.Deleted || b.DeletedAt.IsZero() || b.Digest != d {
		t.Errorf("latest = %+v; want a tombstone of %s", b, d)
	}
	ev := historyIs(t, l, "team/app", "latest", storage.EventAccepted, storage.EventDeleted)
	if len(ev) == 2 && ev[1].Digest != d {
		t.Errorf("delete event = %+v", ev[1])
	}
	noneHeld(t, l)
}

// TestDeleteOfAMutableTagTheLedgerNeverSaw: a mutable tag taglock has no
// record of is not looked up: the delete is forwarded and nothing is
// recorded.
func TestDeleteOfAMutableTagTheLedgerNeverSaw(t *testing.T) {
	t.Parallel()
	s, _, l := scripted(t, exchange{method: "DELETE", path: app + "/manifests/latest", status: 202})

	answered(t, serve(s, "DELETE", app+"/manifests/latest", ""), 202, "")

	unbound(t, l, "team/app", "latest")
	historyIs(t, l, "team/app", "latest")
	noneHeld(t, l)
}

// TestDeleteOfATagTheUpstreamLacks: a 404 means the tag is gone either way:
// the answer is relayed and the binding becomes a tombstone.
func TestDeleteOfATagTheUpstreamLacks(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	unknown := `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`
	s, _, l := scripted(t,
		stores(app+"/manifests/latest", m),
		exchange{method: "DELETE", path: app + "/manifests/latest", status: 404, body: unknown})
	answered(t, serve(s, "PUT", app+"/manifests/latest", m), 201, d)

	w := serve(s, "DELETE", app+"/manifests/latest", "")
	refusedWith(t, w, http.StatusNotFound, "MANIFEST_UNKNOWN")

	if b := bindingOf(t, l, "team/app", "latest"); !b.Deleted {
		t.Errorf("latest = %+v; want a tombstone", b)
	}
	historyIs(t, l, "team/app", "latest", storage.EventAccepted, storage.EventDeleted)
	noneHeld(t, l)
}

// TestDeleteOfAWarnTagIsWarned: a warn-mode tag is deleted like a mutable
// one, and the delete is also recorded as a warning.
func TestDeleteOfAWarnTagIsWarned(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, _, l := scriptedWith(t, Options{Immutability: testRules()},
		notThere(app+"/manifests/edge"),
		stores(app+"/manifests/edge", m),
		exchange{method: "DELETE", path: app + "/manifests/edge", status: 202})
	answered(t, serve(s, "PUT", app+"/manifests/edge", m), 201, d)

	answered(t, serve(s, "DELETE", app+"/manifests/edge", ""), 202, "")

	if b := bindingOf(t, l, "team/app", "edge"); !b.Deleted {
		t.Errorf("edge = %+v; want a tombstone", b)
	}
	ev := historyIs(t, l, "team/app", "edge", storage.EventAccepted, storage.EventDeleted, storage.EventWarned)
	if len(ev) == 3 && (ev[2].Reason != ReasonTagDeleted || ev[2].Digest != d) {
		t.Errorf("warning = %+v", ev[2])
	}
	noneHeld(t, l)
}

// TestDeleteByDigestOfAnImmutablyBoundManifestIsRefused: taglock first lists
// the upstream's tags (to adopt any it never saw), then refuses deleting a
// manifest an immutable tag is bound to without forwarding it.
func TestDeleteByDigestOfAnImmutablyBoundManifestIsRefused(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	s, up, l := scripted(t,
		notThere(app+"/manifests/1.0"),
		stores(app+"/manifests/1.0", m))
	answered(t, serve(s, "PUT", app+"/manifests/1.0", m), 201, d)

	up.expect(tagList("team/app", "1.0"))
	msg := refusedWith(t, serve(s, "DELETE", app+"/manifests/"+d.String(), ""), http.StatusForbidden, "DENIED")
	if !strings.Contains(msg, `"team/app:1.0"`) {
		t.Errorf("message %q does not name the tag that protects it", msg)
	}

	if b := bindingOf(t, l, "team/app", "1.0"); b.Deleted {
		t.Errorf("1.0 = %+v; want live", b)
	}
	ev := historyIs(t, l, "team/app", "1.0", storage.EventAccepted, storage.EventRefused)
	if len(ev) == 2 && (ev[1].Reason != ReasonManifestDeleted || ev[1].Digest != d) {
		t.Errorf("refusal = %+v", ev[1])
	}
	noneHeld(t, l)
}

// TestDeleteByDigestOfAMutablyBoundManifest: a manifest only mutable tags
// are bound to is deleted, and every tag bound to it becomes a tombstone.
func TestDeleteByDigestOfAMutablyBoundManifest(t *testing.T) {
	t.Parallel()
	const dev = "/v2/team/dev"
	m, d := testManifest("a")
	s, up, l := scriptedWith(t, Options{Immutability: testRules()},
		stores(dev+"/manifests/a", m),
		stores(dev+"/manifests/b", m))
	answered(t, serve(s, "PUT", dev+"/manifests/a", m), 201, d)
	answered(t, serve(s, "PUT", dev+"/manifests/b", m), 201, d)

	up.expect(tagList("team/dev", "a", "b"), exchange{method: "DELETE", path: dev + "/manifests/" + d.String(), status: 202})
	answered(t, serve(s, "DELETE", dev+"/manifests/"+d.String(), ""), 202, "")

	for _, tag := range []string{"a", "b"} {
		if b := bindingOf(t, l, "team/dev", tag); !b.Deleted {
			t.Errorf("%s = %+v; want a tombstone", tag, b)
		}
		historyIs(t, l, "team/dev", tag, storage.EventAccepted, storage.EventDeleted)
	}
	noneHeld(t, l)
}

// TestDeleteOfABlobAnImmutableImageUsesIsRefused: a layer in the closure of
// an immutable tag is protected like the manifest.
func TestDeleteOfABlobAnImmutableImageUsesIsRefused(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	layer := digest.FromString("a/layer")
	s, up, l := scripted(t,
		notThere(app+"/manifests/1.0"),
		stores(app+"/manifests/1.0", m))
	answered(t, serve(s, "PUT", app+"/manifests/1.0", m), 201, d)

	up.expect(tagList("team/app", "1.0"))
	msg := refusedWith(t, serve(s, "DELETE", app+"/blobs/"+layer.String(), ""), http.StatusForbidden, "DENIED")
	if !strings.Contains(msg, "blob "+layer.String()) {
		t.Errorf("message %q does not name the blob", msg)
	}

	ev := historyIs(t, l, "team/app", "1.0", storage.EventAccepted, storage.EventRefused)
	if len(ev) == 2 && (ev[1].Reason != ReasonBlobDeleted || ev[1].Digest != layer || ev[1].Previous != d) {
		t.Errorf("refusal = %+v", ev[1])
	}
	noneHeld(t, l)
}

// TestDeleteOfABlobNothingBindsIsForwarded: content no binding references is
// the registry's to delete; nothing is recorded.
func TestDeleteOfABlobNothingBindsIsForwarded(t *testing.T) {
	t.Parallel()
	blob := digest.FromString("loose")
	s, _, l := scripted(t,
		exchange{method: "GET", path: app + "/tags/list", query: "n=1000", status: 404},
		exchange{method: "DELETE", path: app + "/blobs/" + blob.String(), status: 202})

	answered(t, serve(s, "DELETE", app+"/blobs/"+blob.String(), ""), 202, "")

	historyIs(t, l, "team/app", "")
	noneHeld(t, l)
}

// TestDeleteTheUpstreamDidNotAnswerIsLeftToTheSettler: a delete that gets no
// answer may or may not have happened: the client is told so with 502, the
// tag stays live and held, and a push to it meanwhile is refused (after its
// wait) without reaching the upstream.
func TestDeleteTheUpstreamDidNotAnswerIsLeftToTheSettler(t *testing.T) {
	t.Parallel()
	m, d := testManifest("a")
	other, _ := testManifest("b")
	s, _, l := scriptedWith(t, Options{Immutability: policy.DefaultImmutability(), ReserveWait: time.Nanosecond},
		stores(app+"/manifests/latest", m),
		unreachable("DELETE", app+"/manifests/latest"))
	answered(t, serve(s, "PUT", app+"/manifests/latest", m), 201, d)

	msg := refusedWith(t, serve(s, "DELETE", app+"/manifests/latest", ""), http.StatusBadGateway, "UNAVAILABLE")
	if !strings.Contains(msg, "did not answer the delete") || !strings.Contains(msg, "not known yet") {
		t.Errorf("message %q does not say the delete's outcome is not known yet", msg)
	}
	if b := bindingOf(t, l, "team/app", "latest"); b.Deleted {
		t.Errorf("latest = %+v; want live until the settler knows", b)
	}
	res := pending(t, l)
	if len(res) != 1 || !res[0].IsDelete() || !slices.Equal(res[0].Tags, []string{"latest"}) || res[0].Digest != d {
		t.Fatalf("reservations = %+v; want the delete of latest held", res)
	}

	msg = refusedWith(t, serve(s, "PUT", app+"/manifests/latest", other), http.StatusServiceUnavailable, "UNAVAILABLE")
	if !strings.Contains(msg, "earlier delete") {
		t.Errorf("a push meanwhile: %q; want it held by the earlier delete", msg)
	}
	historyIs(t, l, "team/app", "latest", storage.EventAccepted)
}
