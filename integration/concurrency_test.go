package integration

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// stormResult is one pusher's answer.
type stormResult struct {
	status     int
	body       []byte
	retryAfter string
	err        error
}

// storm PUTs each manifest to path at the same moment, each on its own
// connection, and returns the answers in the same order.
func storm(t *testing.T, addr, path string, mans []Manifest) []stormResult {
	t.Helper()
	out := make([]stormResult, len(mans))
	start := make(chan struct{})
	var ready, done sync.WaitGroup
	for i, m := range mans {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, "http://"+addr+path, bytes.NewReader(m.Raw))
			if err != nil {
				out[i].err = err
				ready.Done()
				return
			}
			req.Header.Set("Content-Type", m.MediaType)
			ready.Done()
			<-start
			resp, err := client.Do(req)
			if err != nil {
				out[i].err = err
				return
			}
			defer resp.Body.Close()
			out[i].status = resp.StatusCode
			out[i].retryAfter = resp.Header.Get("Retry-After")
			out[i].body, out[i].err = io.ReadAll(resp.Body)
		}()
	}
	ready.Wait()
	close(start)
	done.Wait()
	return out
}

// TestConflictingPushStorm ensures that when 32 clients push 32 different
// images to the same new immutable tag at once, exactly one wins, every
// other one is refused, and afterwards the ledger binds the digest the
// registry serves.
func TestConflictingPushStorm(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		const n = 32
		mans := make([]Manifest, n)
		for i := range mans {
			img, err := random.Image(64, 1)
			if err != nil {
				t.Fatalf("random image: %v", err)
			}
			// Blobs first, so the storm is only the tag write.
			MustPushByDigest(t, e.Addr, "team/app", img)
			mans[i] = MustManifest(t, img)
		}

		results := storm(t, e.Addr, "/v2/team/app/manifests/storm", mans)
		var (
			winner        digest.Digest
			won, denied   int
			busy, unknown int
		)
		for i, r := range results {
			switch {
			case r.err != nil:
				unknown++
				t.Errorf("pusher %d: %v", i, r.err)
			case r.status == http.StatusCreated:
				won++
				winner = mans[i].Digest
			case r.status == http.StatusForbidden:
				denied++
				if oe := parseOCI(t, r.status, r.body); oe.Code != "DENIED" {
					t.Errorf("pusher %d: 403 with code %s, want DENIED", i, oe.Code)
				}
			case r.status == http.StatusServiceUnavailable && r.retryAfter != "":
				busy++
			default:
				unknown++
				t.Errorf("pusher %d: %d %s (Retry-After %q), want 201, 403 DENIED or 503 with Retry-After", i, r.status, r.body, r.retryAfter)
			}
		}
		t.Logf("%d won, %d refused, %d told to retry", won, denied, busy)
		if won != 1 {
			t.Fatalf("%d pushers won, want exactly 1", won)
		}
		// Every refusal names the winner as the binding.
		for i, r := range results {
			if r.status == http.StatusForbidden {
				wantDenied(t, parseOCI(t, r.status, r.body), moveRefusal(winner, mans[i].Digest))
			}
		}
		e.wantServed(t, "team/app:storm", winner)

		l := e.MustOpenLedger(t)
		b, err := l.Binding(t.Context(), "team/app", "storm")
		if err != nil || b.Digest != winner {
			t.Errorf("ledger binds team/app:storm to %s (%v), the registry serves %s", b.Digest, err, winner)
		}
		if res, err := l.Reservations(t.Context()); err != nil || len(res) != 0 {
			t.Errorf("reservations = %+v, %v; want none", res, err)
		}
		hist, err := l.History(t.Context(), "team/app", "storm", 0)
		if err != nil {
			t.Fatalf("history: %v", err)
		}
		counts := map[storage.EventKind]int{}
		for _, ev := range hist {
			counts[ev.Kind]++
			if ev.Kind == storage.EventAccepted && ev.Digest != winner {
				t.Errorf("accepted event for %s, the winner is %s", ev.Digest, winner)
			}
		}
		if counts[storage.EventAccepted] != 1 || counts[storage.EventRefused] != denied {
			t.Errorf("history kinds = %v, want 1 accepted and %d refused", counts, denied)
		}
	})
}

// TestIdenticalPushStorm ensures that 16 clients pushing the same image to
// the same new immutable tag at once all succeed.
func TestIdenticalPushStorm(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		img := MustImage(t)
		MustPushByDigest(t, e.Addr, "team/app", img)
		man := MustManifest(t, img)
		mans := make([]Manifest, 16)
		for i := range mans {
			mans[i] = man
		}
		for i, r := range storm(t, e.Addr, "/v2/team/app/manifests/same", mans) {
			if r.err != nil || r.status != http.StatusCreated {
				t.Errorf("pusher %d: %d %s %v, want 201", i, r.status, r.body, r.err)
			}
		}
		e.wantServed(t, "team/app:same", man.Digest)

		l := e.MustOpenLedger(t)
		b, err := l.Binding(t.Context(), "team/app", "same")
		if err != nil || b.Digest != man.Digest || b.Mode != policy.Immutable {
			t.Errorf("binding = %+v, %v; want %s immutable", b, err, man.Digest)
		}
		if res, err := l.Reservations(t.Context()); err != nil || len(res) != 0 {
			t.Errorf("reservations = %+v, %v; want none", res, err)
		}
	})
}
