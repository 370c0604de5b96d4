package integration

import (
	"errors"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// TestWarnModeLetsMovesThrough ensures that with immutability.default warn a
// retarget succeeds, the registry serves the new digest, and the ledger
// records a warned event naming both digests.
func TestWarnModeLetsMovesThrough(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, func(c *config.Config) { c.Immutability.Default = "warn" })
		first, second := MustImage(t), MustImage(t)
		firstD, secondD := MustDigest(t, first), MustDigest(t, second)
		MustPush(t, e.Addr, "team/app:1.0.0", first)
		if err := remote.Write(e.Ref(t, "team/app:1.0.0"), second, ggcrOpts(t)...); err != nil {
			t.Fatalf("warn mode refused a retarget: %v", err)
		}
		e.wantServed(t, "team/app:1.0.0", secondD)

		l := e.MustOpenLedger(t)
		b, err := l.Binding(t.Context(), "team/app", "1.0.0")
		if err != nil || b.Digest != secondD || b.Mode != policy.Warn {
			t.Errorf("binding = %+v, %v; want %s in warn mode", b, err, secondD)
		}
		hist, err := l.History(t.Context(), "team/app", "1.0.0", 0)
		if err != nil {
			t.Fatalf("history: %v", err)
		}
		var warned []storage.Event
		for _, ev := range hist {
			if ev.Kind == storage.EventWarned {
				warned = append(warned, ev)
			}
		}
		if len(warned) != 1 {
			t.Fatalf("history has %d warned events, want 1: %+v", len(warned), hist)
		}
		if w := warned[0]; w.Previous != firstD || w.Digest != secondD || w.Reason == "" {
			t.Errorf("warned event = %+v, want %s moved to %s", w, firstD, secondD)
		}
	})
}

// TestFailClosedWhenUpstreamDown ensures that when the upstream cannot be
// reached, a push to a new immutable tag and a delete by digest are refused
// with a 5xx and nothing is recorded. It needs an upstream that can be
// stopped, so it runs in upstream mode only; the embedded registry cannot
// be unreachable.
func TestFailClosedWhenUpstreamDown(t *testing.T) {
	t.Parallel()
	e := MustEnv(t, Separate)
	img := MustImage(t)
	MustPushByDigest(t, e.Addr, "team/app", img)
	man := MustManifest(t, img)
	e.Up.Stop()

	resp, body := putManifest(t, e.Addr, "/v2/team/app/manifests/1.0.0", man)
	if resp.StatusCode < 500 {
		t.Errorf("push with the upstream down: %d %s, want 5xx", resp.StatusCode, body)
	} else if oe := parseOCI(t, resp.StatusCode, body); oe.Code != "UNAVAILABLE" {
		t.Errorf("push with the upstream down: code %s, want UNAVAILABLE", oe.Code)
	}
	resp, body = do(t, http.MethodDelete, e.URL("/v2/team/app/manifests/"+man.Digest.String()), nil, nil)
	if resp.StatusCode < 500 {
		t.Errorf("delete with the upstream down: %d %s, want 5xx", resp.StatusCode, body)
	}

	l := e.MustOpenLedger(t)
	if b, err := l.Binding(t.Context(), "team/app", "1.0.0"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("binding = %+v, %v; want none", b, err)
	}
	if res, err := l.Reservations(t.Context()); err != nil || len(res) != 0 {
		t.Errorf("reservations = %+v, %v; want none", res, err)
	}
}
