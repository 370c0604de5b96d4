package integration

import (
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// TestIdenticalRepushSucceeds ensures that pushing an image to an immutable
// tag works, and that pushing the very same image again succeeds with every
// client library, as CI retries and multi-arch pushes need.
func TestIdenticalRepushSucceeds(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		img := MustImage(t)
		man := MustManifest(t, img)

		MustPush(t, e.Addr, "team/app:1.0.0", img)
		e.wantServed(t, "team/app:1.0.0", man.Digest)

		// remote.Write finds the manifest already there and skips the
		// PUT; remote.Put, oras-go and regclient send it again.
		if err := remote.Write(e.Ref(t, "team/app:1.0.0"), img, ggcrOpts(t)...); err != nil {
			t.Errorf("go-containerregistry Write again: %v", err)
		}
		if err := remote.Put(e.Ref(t, "team/app:1.0.0"), img, ggcrOpts(t)...); err != nil {
			t.Errorf("go-containerregistry Put again: %v", err)
		}
		if err := orasPut(t, e.Addr, "team/app", "1.0.0", man); err != nil {
			t.Errorf("oras-go push again: %v", err)
		}
		if err := regclientPut(t, e.Addr, "team/app", "1.0.0", man); err != nil {
			t.Errorf("regclient push again: %v", err)
		}
		resp, body := putManifest(t, e.Addr, "/v2/team/app/manifests/1.0.0", man)
		if resp.StatusCode != http.StatusCreated || resp.Header.Get("Docker-Content-Digest") != man.Digest.String() {
			t.Errorf("raw re-push: %d %s, Docker-Content-Digest %q; want 201 with %s",
				resp.StatusCode, body, resp.Header.Get("Docker-Content-Digest"), man.Digest)
		}
		e.wantServed(t, "team/app:1.0.0", man.Digest)

		b, err := e.Ledger().Binding(t.Context(), "team/app", "1.0.0")
		if err != nil {
			t.Fatalf("binding: %v", err)
		}
		if b.Digest != man.Digest || b.Mode != policy.Immutable || b.PushedBy != "anonymous" || b.PushedAt.IsZero() ||
			b.MediaType != man.MediaType || b.Size != int64(len(man.Raw)) {
			t.Errorf("binding = %+v, want %s immutable, first pushed by anonymous", b, man.Digest)
		}
		hist, err := e.Ledger().History(t.Context(), "team/app", "1.0.0", 0)
		if err != nil {
			t.Fatalf("history: %v", err)
		}
		counts := map[storage.EventKind]int{}
		for _, ev := range hist {
			counts[ev.Kind]++
		}
		// One first push, then four PUTs of the same bytes.
		if counts[storage.EventAccepted] != 1 || counts[storage.EventIdentical] != 4 || len(hist) != 5 {
			t.Errorf("history kinds = %v, want 1 accepted and 4 identical", counts)
		}
	})
}

// TestRetargetRefused ensures that pushing different content to an immutable
// tag is refused with 403 DENIED by every client library, naming both
// digests, and that a pull afterwards still returns the original.
func TestRetargetRefused(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		orig, other := MustImage(t), MustImage(t)
		origM, otherM := MustManifest(t, orig), MustManifest(t, other)
		MustPush(t, e.Addr, "team/app:1.0.0", orig)
		// The other image's blobs and manifest exist, so only the tag
		// write can fail.
		MustPushByDigest(t, e.Addr, "team/app", other)

		want := moveRefusal(origM.Digest, otherM.Digest)
		want.Says = append(want.Says, `"team/app:1.0.0"`)

		t.Run("go-containerregistry", func(t *testing.T) {
			err := remote.Write(e.Ref(t, "team/app:1.0.0"), other, ggcrOpts(t)...)
			wantDenied(t, ggcrError(t, err), want)
		})
		t.Run("oras-go", func(t *testing.T) {
			err := orasPut(t, e.Addr, "team/app", "1.0.0", otherM)
			wantDenied(t, orasError(t, err), want)
		})
		t.Run("regclient", func(t *testing.T) {
			err := regclientPut(t, e.Addr, "team/app", "1.0.0", otherM)
			wantDenied(t, regclientError(t, err), want)
		})
		t.Run("net/http", func(t *testing.T) {
			resp, body := putManifest(t, e.Addr, "/v2/team/app/manifests/1.0.0", otherM)
			wantDenied(t, parseOCI(t, resp.StatusCode, body), want)
			if d := resp.Header.Get("Docker-Content-Digest"); d != "" {
				t.Errorf("a refusal carries Docker-Content-Digest %q", d)
			}
		})

		e.wantServed(t, "team/app:1.0.0", origM.Digest)
		pulled, err := remote.Image(e.Ref(t, "team/app:1.0.0"), ggcrOpts(t)...)
		if err != nil {
			t.Fatalf("pull: %v", err)
		}
		if got := MustManifest(t, pulled); string(got.Raw) != string(origM.Raw) {
			t.Errorf("pulled manifest differs from the original")
		}

		l := e.MustOpenLedger(t)
		b, err := l.Binding(t.Context(), "team/app", "1.0.0")
		if err != nil || b.Digest != origM.Digest {
			t.Errorf("binding = %s, %v; want %s", b.Digest, err, origM.Digest)
		}
		refused, err := l.Recent(t.Context(), storage.EventRefused, 0)
		if err != nil {
			t.Fatalf("recent: %v", err)
		}
		if len(refused) != 4 {
			t.Errorf("ledger recorded %d refusals, want 4", len(refused))
		}
		for _, ev := range refused {
			if ev.Digest != otherM.Digest || ev.Previous != origM.Digest || ev.Reason == "" {
				t.Errorf("refusal event = %+v, want attempted %s over %s", ev, otherM.Digest, origM.Digest)
			}
		}
	})
}

// TestTagQueryRetargetRefused ensures that a PUT by digest whose ?tag= names
// an immutable tag bound elsewhere is refused before it reaches the
// registry, and that a ?tag= the registry does not apply (Distribution
// ignores the parameter and sends no OCI-Tag header) binds nothing.
func TestTagQueryRetargetRefused(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		orig, other := MustImage(t), MustImage(t)
		origM, otherM := MustManifest(t, orig), MustManifest(t, other)
		MustPush(t, e.Addr, "team/app:1.0.0", orig)
		MustPushByDigest(t, e.Addr, "team/app", other)

		var before int64
		if e.Up != nil {
			before = e.Up.Requests()
		}
		resp, body := putManifest(t, e.Addr, "/v2/team/app/manifests/"+otherM.Digest.String()+"?tag=1.0.0", otherM)
		wantDenied(t, parseOCI(t, resp.StatusCode, body), moveRefusal(origM.Digest, otherM.Digest))
		if e.Up != nil && e.Up.Requests() != before {
			t.Errorf("the refused PUT sent %d requests to the upstream, want 0", e.Up.Requests()-before)
		}

		// Several tags at once: one bound elsewhere refuses them all.
		resp, body = putManifest(t, e.Addr, "/v2/team/app/manifests/"+otherM.Digest.String()+"?tag=2.0.0&tag=1.0.0", otherM)
		wantDenied(t, parseOCI(t, resp.StatusCode, body), moveRefusal(origM.Digest, otherM.Digest))

		// The bound digest with ?tag= of its own tag is an identical push.
		resp, body = putManifest(t, e.Addr, "/v2/team/app/manifests/"+origM.Digest.String()+"?tag=1.0.0", origM)
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("identical PUT by digest with ?tag=1.0.0: %d %s, want 201", resp.StatusCode, body)
		}

		// A new tag by ?tag=: Distribution stores the manifest by digest
		// and ignores the tag, so taglock must not bind it.
		resp, body = putManifest(t, e.Addr, "/v2/team/app/manifests/"+otherM.Digest.String()+"?tag=3.0.0", otherM)
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("PUT by digest with ?tag=3.0.0: %d %s, want 201", resp.StatusCode, body)
		}
		if tags := resp.Header.Values("OCI-Tag"); len(tags) != 0 {
			t.Errorf("Distribution answered OCI-Tag %v; this test assumes it ignores ?tag=", tags)
		}
		for _, addr := range e.Registries() {
			if _, err := remote.Head(mustRef(t, addr, "team/app:3.0.0"), ggcrOpts(t)...); ggcrError(t, err).Status != http.StatusNotFound {
				t.Errorf("%s: team/app:3.0.0 exists, want 404", addr)
			}
		}
		e.wantServed(t, "team/app:1.0.0", origM.Digest)

		l := e.MustOpenLedger(t)
		for tag, want := range map[string]string{"1.0.0": origM.Digest.String(), "2.0.0": "", "3.0.0": ""} {
			b, err := l.Binding(t.Context(), "team/app", tag)
			if want == "" {
				if err == nil {
					t.Errorf("ledger binds team/app:%s to %s, want no binding", tag, b.Digest)
				}
				continue
			}
			if err != nil || b.Digest.String() != want {
				t.Errorf("binding team/app:%s = %s, %v; want %s", tag, b.Digest, err, want)
			}
		}
		if res, err := l.Reservations(t.Context()); err != nil || len(res) != 0 {
			t.Errorf("reservations = %v, %v; want none", res, err)
		}
	})
}
