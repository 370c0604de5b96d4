package integration

import (
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/storage"
)

// deleteRefusal is what refusing to delete an immutable tag must say.
func deleteRefusal(recorded digest.Digest) Denial {
	return Denial{Recorded: recorded, Rule: "immutability.default",
		Says: []string{`"team/app:1.0.0" is immutable`, "deleting it is refused", "first pushed"}}
}

// protectRefusal is what refusing to delete content an immutable tag points
// to must say.
func protectRefusal(tag string, recorded, attempted digest.Digest, what string) Denial {
	return Denial{Recorded: recorded, Attempted: attempted, Rule: "immutability.default",
		Says: []string{what + " " + attempted.String() + " is protected", `immutable tag "` + tag + `"`, "deleting it is refused"}}
}

// TestDeleteRefused ensures that an immutable tag cannot be removed: not by
// deleting the tag, not by deleting its manifest by digest, not by deleting
// one of its blobs, and that content no immutable tag holds can still be
// deleted.
func TestDeleteRefused(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		img := MustImage(t)
		man := MustManifest(t, img)
		MustPush(t, e.Addr, "team/app:1.0.0", img)
		layer := mustLayers(t, img)[0]

		t.Run("tag with net/http", func(t *testing.T) {
			resp, body := do(t, http.MethodDelete, e.URL("/v2/team/app/manifests/1.0.0"), nil, nil)
			wantDenied(t, parseOCI(t, resp.StatusCode, body), deleteRefusal(man.Digest))
		})
		t.Run("tag with go-containerregistry", func(t *testing.T) {
			err := remote.Delete(e.Ref(t, "team/app:1.0.0"), ggcrOpts(t)...)
			wantDenied(t, ggcrError(t, err), deleteRefusal(man.Digest))
		})
		t.Run("digest with net/http", func(t *testing.T) {
			resp, body := do(t, http.MethodDelete, e.URL("/v2/team/app/manifests/"+man.Digest.String()), nil, nil)
			wantDenied(t, parseOCI(t, resp.StatusCode, body), protectRefusal("team/app:1.0.0", man.Digest, man.Digest, "manifest"))
		})
		t.Run("digest with oras-go", func(t *testing.T) {
			err := orasRepo(t, e.Addr, "team/app").Delete(t.Context(), man.oci())
			wantDenied(t, orasError(t, err), protectRefusal("team/app:1.0.0", man.Digest, man.Digest, "manifest"))
		})
		t.Run("layer blob", func(t *testing.T) {
			resp, body := do(t, http.MethodDelete, e.URL("/v2/team/app/blobs/"+layer.String()), nil, nil)
			wantDenied(t, parseOCI(t, resp.StatusCode, body), protectRefusal("team/app:1.0.0", man.Digest, layer, "blob"))
		})

		e.wantServed(t, "team/app:1.0.0", man.Digest)
		for _, addr := range e.Registries() {
			resp, _ := do(t, http.MethodHead, "http://"+addr+"/v2/team/app/blobs/"+layer.String(), nil, nil)
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s: layer %s answers %d after the refused delete, want 200", addr, layer, resp.StatusCode)
			}
		}

		// Content no immutable tag references is the registry's to delete.
		loose := MustImage(t)
		MustPushByDigest(t, e.Addr, "team/app", loose)
		resp, body := do(t, http.MethodDelete, e.URL("/v2/team/app/blobs/"+mustLayers(t, loose)[0].String()), nil, nil)
		if resp.StatusCode != http.StatusAccepted {
			t.Errorf("delete of an unprotected blob: %d %s, want 202", resp.StatusCode, body)
		}
		resp, body = do(t, http.MethodDelete, e.URL("/v2/team/app/manifests/"+MustDigest(t, loose).String()), nil, nil)
		if resp.StatusCode != http.StatusAccepted {
			t.Errorf("delete of an untagged manifest: %d %s, want 202", resp.StatusCode, body)
		}

		b, err := e.Ledger().Binding(t.Context(), "team/app", "1.0.0")
		if err != nil || b.Deleted || b.Digest != man.Digest {
			t.Errorf("binding = %+v, %v; want live %s", b, err, man.Digest)
		}
	})
}

// TestIndexChildrenProtected ensures that a multi-arch index pushed to an
// immutable tag protects its child manifests and their blobs from deletion
// by digest.
func TestIndexChildrenProtected(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		idx, err := random.Index(256, 1, 2)
		if err != nil {
			t.Fatalf("random index: %v", err)
		}
		if err := remote.WriteIndex(e.Ref(t, "team/multi:2.0.0"), idx, ggcrOpts(t)...); err != nil {
			t.Fatalf("push index: %v", err)
		}
		idxDigest := MustDigest(t, idx)
		im, err := idx.IndexManifest()
		if err != nil {
			t.Fatalf("index manifest: %v", err)
		}
		if len(im.Manifests) != 2 {
			t.Fatalf("index has %d children, want 2", len(im.Manifests))
		}
		for _, c := range im.Manifests {
			child := digest.Digest(c.Digest.String())
			resp, body := do(t, http.MethodDelete, e.URL("/v2/team/multi/manifests/"+child.String()), nil, nil)
			wantDenied(t, parseOCI(t, resp.StatusCode, body), protectRefusal("team/multi:2.0.0", idxDigest, child, "manifest"))

			img, err := idx.Image(c.Digest)
			if err != nil {
				t.Fatalf("child image: %v", err)
			}
			layer := mustLayers(t, img)[0]
			resp, body = do(t, http.MethodDelete, e.URL("/v2/team/multi/blobs/"+layer.String()), nil, nil)
			wantDenied(t, parseOCI(t, resp.StatusCode, body), protectRefusal("team/multi:2.0.0", idxDigest, layer, "blob"))

			for _, addr := range e.Registries() {
				if got := mustServed(t, addr, "team/multi@"+child.String()); got != child {
					t.Errorf("%s serves child %s as %s", addr, child, got)
				}
			}
		}
		e.wantServed(t, "team/multi:2.0.0", idxDigest)
	})
}

// TestMutableTagMoves ensures that a mutable tag (latest) moves to new
// content and can be deleted, while the ledger keeps its history.
func TestMutableTagMoves(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		first, second := MustImage(t), MustImage(t)
		MustPush(t, e.Addr, "team/app:latest", first)
		e.wantServed(t, "team/app:latest", MustDigest(t, first))
		MustPush(t, e.Addr, "team/app:latest", second)
		e.wantServed(t, "team/app:latest", MustDigest(t, second))

		// Moving it back with another client works too.
		if err := orasPut(t, e.Addr, "team/app", "latest", MustManifest(t, first)); err != nil {
			t.Errorf("oras-go move latest back: %v", err)
		}
		e.wantServed(t, "team/app:latest", MustDigest(t, first))

		if err := remote.Delete(e.Ref(t, "team/app:latest"), ggcrOpts(t)...); err != nil {
			t.Fatalf("delete latest: %v", err)
		}
		for _, addr := range e.Registries() {
			_, err := remote.Head(mustRef(t, addr, "team/app:latest"), ggcrOpts(t)...)
			if got := ggcrError(t, err).Status; got != http.StatusNotFound {
				t.Errorf("%s: HEAD latest after delete = %d, want 404", addr, got)
			}
		}
		// A deleted mutable tag is free again.
		MustPush(t, e.Addr, "team/app:latest", second)
		e.wantServed(t, "team/app:latest", MustDigest(t, second))

		hist, err := e.Ledger().History(t.Context(), "team/app", "latest", 0)
		if err != nil {
			t.Fatalf("history: %v", err)
		}
		var kinds []storage.EventKind
		for i := len(hist) - 1; i >= 0; i-- {
			kinds = append(kinds, hist[i].Kind)
		}
		want := []storage.EventKind{storage.EventAccepted, storage.EventMoved, storage.EventMoved, storage.EventDeleted, storage.EventAccepted}
		if len(kinds) != len(want) {
			t.Fatalf("history = %v, want %v", kinds, want)
		}
		for i := range want {
			if kinds[i] != want[i] {
				t.Errorf("history = %v, want %v", kinds, want)
				break
			}
		}
	})
}
