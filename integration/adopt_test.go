package integration

import (
	"errors"
	"net/http"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/taglock/taglock/internal/server"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

// TestPreexistingTagProtected ensures that a tag the registry held before
// taglock ever saw it is protected like one pushed through taglock: moving
// it is refused naming the digest it already had, and deleting its manifest
// by digest is refused too.
func TestPreexistingTagProtected(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := NewEnv(t, m)
		old, older, other := MustImage(t), MustImage(t), MustImage(t)
		e.Seed(t, func(registry string) {
			MustPush(t, registry, "team/app:1.0.0", old)
			MustPush(t, registry, "team/app:0.9.0", older)
			MustPushByDigest(t, registry, "team/app", other)
		})
		e.Start(t)
		oldD, otherD := MustDigest(t, old), MustDigest(t, other)

		if _, err := e.Ledger().Binding(t.Context(), "team/app", "1.0.0"); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("the new ledger already knows team/app:1.0.0 (%v); the test proves nothing", err)
		}
		err := remote.Write(e.Ref(t, "team/app:1.0.0"), other, ggcrOpts(t)...)
		wantDenied(t, ggcrError(t, err), moveRefusal(oldD, otherD))
		e.wantServed(t, "team/app:1.0.0", oldD)

		b, err := e.Ledger().Binding(t.Context(), "team/app", "1.0.0")
		if err != nil || b.Digest != oldD || b.Mode != policy.Immutable {
			t.Errorf("adopted binding = %+v, %v; want %s immutable", b, err, oldD)
		}
		// The same bytes again are an identical push, not a move.
		if err := remote.Put(e.Ref(t, "team/app:1.0.0"), old, ggcrOpts(t)...); err != nil {
			t.Errorf("identical push of the pre-existing image: %v", err)
		}

		// 0.9.0 was never looked at through taglock; a delete by digest
		// must still find it.
		olderD := MustDigest(t, older)
		resp, body := do(t, http.MethodDelete, e.URL("/v2/team/app/manifests/"+olderD.String()), nil, nil)
		wantDenied(t, parseOCI(t, resp.StatusCode, body), protectRefusal("team/app:0.9.0", olderD, olderD, "manifest"))
		e.wantServed(t, "team/app:0.9.0", olderD)
	})
}

// TestReconcileAtStartup ensures that reservations a crash left in the
// ledger long ago are settled when taglock starts: one whose digest the
// registry now holds under the tag becomes the binding, and one the registry
// does not hold, whose request can no longer land, is released, freeing its
// tag.
func TestReconcileAtStartup(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := NewEnv(t, m)
		landed, lost, held, stray, other := MustImage(t), MustImage(t), MustImage(t), MustImage(t), MustImage(t)
		e.Seed(t, func(registry string) {
			// The push whose reservation survived the crash reached
			// the registry; the other one never did.
			MustPush(t, registry, "team/app:1.0.0", landed)
			// 3.0.0 holds other content than its reservation names.
			MustPush(t, registry, "team/app:3.0.0", held)
		})

		longAgo := time.Now().Add(-time.Hour)
		l, err := bolt.Open(server.LedgerPath(e.Data), bolt.Options{Now: func() time.Time { return longAgo }})
		if err != nil {
			t.Fatalf("open ledger: %v", err)
		}
		for tag, img := range map[string]v1.Image{"1.0.0": landed, "2.0.0": lost, "3.0.0": stray} {
			if _, err := l.Reserve(t.Context(), storage.Reservation{Repo: "team/app", Tags: []string{tag}, Digest: MustDigest(t, img),
				Deadline: longAgo.Add(30 * time.Second)}); err != nil {
				t.Fatalf("reserve %s: %v", tag, err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatalf("close ledger: %v", err)
		}

		e.Start(t)
		ctx := t.Context()
		if res, err := e.Ledger().Reservations(ctx); err != nil || len(res) != 0 {
			t.Errorf("reservations after start-up = %+v, %v; want none", res, err)
		}
		b, err := e.Ledger().Binding(ctx, "team/app", "1.0.0")
		if err != nil || b.Digest != MustDigest(t, landed) || b.Mode != policy.Immutable || b.Deleted {
			t.Errorf("binding 1.0.0 = %+v, %v; want %s immutable", b, err, MustDigest(t, landed))
		}
		for _, tag := range []string{"2.0.0", "3.0.0"} {
			if b, err := e.Ledger().Binding(ctx, "team/app", tag); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("binding %s = %+v, %v; want none (reservation released)", tag, b, err)
			}
		}

		// The committed binding holds: other content is refused.
		err = remote.Write(e.Ref(t, "team/app:1.0.0"), other, ggcrOpts(t)...)
		wantDenied(t, ggcrError(t, err), moveRefusal(MustDigest(t, landed), MustDigest(t, other)))
		// The released tag is free: the first push through taglock binds.
		MustPush(t, e.Addr, "team/app:2.0.0", other)
		e.wantServed(t, "team/app:2.0.0", MustDigest(t, other))
		// The tag whose reservation named other content keeps what the
		// registry holds.
		err = remote.Write(e.Ref(t, "team/app:3.0.0"), stray, ggcrOpts(t)...)
		wantDenied(t, ggcrError(t, err), moveRefusal(MustDigest(t, held), MustDigest(t, stray)))
		e.wantServed(t, "team/app:3.0.0", MustDigest(t, held))
	})
}
