package proxy

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// TestSettlerLeavesReservationsSettledElsewhere ensures that with several
// processes on one ledger the settler settles its own reservations and
// those SettledElsewhere disowns (a replica that died), and never asks the
// upstream about, nor touches, one that another live process is working
// on.
func TestSettlerLeavesReservationsSettledElsewhere(t *testing.T) {
	t.Parallel()
	_, up, l := scripted(t)
	s := New(Options{Upstream: up, Ledger: l, Immutability: policy.DefaultImmutability(), Owner: "me",
		SettledElsewhere: func(owner string) bool { return owner == "live-peer" }})
	m, d := testManifest("a")
	ctx := context.Background()
	for _, owner := range []string{"me", "live-peer", "dead-peer"} {
		if _, err := l.Reserve(ctx, storage.Reservation{Repo: "team/app", Tags: []string{owner}, Digest: d,
			Owner: owner, Deadline: time.Now().Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	pending, err := l.Reservations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range pending {
		if res.Owner != "live-peer" {
			up.expect(exchange{method: "GET", path: "/v2/team/app/manifests/" + res.Tags[0], status: 200,
				header: http.Header{"Content-Type": {"application/vnd.oci.image.manifest.v1+json"}}, body: m})
		}
	}
	if err := s.Reservations().Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	left, err := l.Reservations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].Owner != "live-peer" {
		t.Errorf("reservations left = %+v, want only live-peer's", left)
	}
	for _, tag := range []string{"me", "dead-peer"} {
		if b, err := l.Binding(ctx, "team/app", tag); err != nil || b.Digest != d {
			t.Errorf("binding of %s after the settle = %+v, %v; want %s", tag, b, err, d)
		}
	}
}
