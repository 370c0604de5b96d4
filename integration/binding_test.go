package integration

import (
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/taglock/taglock/internal/config"
)

// TestBindingOutlivesConfigAndDeletion ensures that an immutable binding is
// forever: a taglock restarted with every tag mutable still refuses to move
// it, and when the tag is deleted behind taglock's back (directly on the
// upstream) the name is still not free for other content, while the
// original image can be pushed back.
func TestBindingOutlivesConfigAndDeletion(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		orig, other := MustImage(t), MustImage(t)
		origD, otherD := MustDigest(t, orig), MustDigest(t, other)
		MustPush(t, e.Addr, "team/app:1.0.0", orig)
		MustPushByDigest(t, e.Addr, "team/app", other)
		e.Stop(t)

		e.cfg.Immutability = config.Immutability{Default: "mutable"}
		e.Start(t)
		want := moveRefusal(origD, otherD)
		want.Rule = "immutability.default (recorded when first pushed)"
		err := remote.Write(e.Ref(t, "team/app:1.0.0"), other, ggcrOpts(t)...)
		wantDenied(t, ggcrError(t, err), want)
		resp, body := do(t, http.MethodDelete, e.URL("/v2/team/app/manifests/1.0.0"), nil, nil)
		if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusForbidden || oe.Code != "DENIED" {
			t.Errorf("delete under a relaxed config: %d %s, want 403 DENIED", oe.Status, oe.Code)
		}
		e.wantServed(t, "team/app:1.0.0", origD)

		if e.Up == nil {
			return // the embedded registry has no way around taglock
		}
		resp, body = do(t, http.MethodDelete, "http://"+e.Up.Addr+"/v2/team/app/manifests/1.0.0", nil, nil)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("delete directly on the upstream: %d %s", resp.StatusCode, body)
		}
		err = remote.Write(e.Ref(t, "team/app:1.0.0"), other, ggcrOpts(t)...)
		wantDenied(t, ggcrError(t, err), want)
		// taglock still serves the tag as recorded, from its ledger.
		if got := mustServed(t, e.Addr, "team/app:1.0.0"); got != origD {
			t.Errorf("after the upstream lost the tag, taglock serves it as %s, want the recorded %s", got, origD)
		}
		// A client that checks first (as ggcr does) sees the tag there and
		// skips its PUT; a PUT of the original bytes puts it back upstream.
		if resp, body := putManifest(t, e.Addr, "/v2/team/app/manifests/1.0.0", MustManifest(t, orig)); resp.StatusCode != http.StatusCreated {
			t.Fatalf("re-push of the original: %d %s", resp.StatusCode, body)
		}
		e.wantServed(t, "team/app:1.0.0", origD)
	})
}
