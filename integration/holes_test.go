package integration

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/internal/admin"
	"github.com/taglock/taglock/internal/config"
	"github.com/taglock/taglock/storage"
)

// The tests in this file are the holes an attack through taglock found, one
// test each: they failed before the fix.

// TestTagParameterNextToAPathTag ensures a push cannot bind tags the
// registry never applied: ?tag= next to a tag in the path is refused with
// 400 and changes nothing, and ?tag= on a push by digest binds only the
// tags the registry says it applied (Distribution applies none).
func TestTagParameterNextToAPathTag(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		img := MustImage(t)
		MustPushByDigest(t, e.Addr, "team/app", img)
		man := MustManifest(t, img)

		resp, body := putManifest(t, e.Addr, "/v2/team/app/manifests/v1?tag=extra1&tag=extra2", man)
		if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusBadRequest || oe.Code != "TAG_INVALID" ||
			!strings.Contains(oe.Message, "only when pushing by digest") {
			t.Errorf("path tag with ?tag=: %d %s %q, want 400 TAG_INVALID saying ?tag= is for pushes by digest", oe.Status, oe.Code, oe.Message)
		}
		resp, body = putManifest(t, e.Addr, "/v2/team/app/manifests/"+man.Digest.String()+"?tag=p1&tag=p2", man)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("push by digest with ?tag=: %d %s", resp.StatusCode, body)
		}
		for _, tag := range []string{"v1", "extra1", "extra2", "p1", "p2"} {
			if b, err := e.Ledger().Binding(t.Context(), "team/app", tag); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("binding %s = %+v, %v; want none: the registry applied no such tag", tag, b, err)
			}
			if e.served(t, "/v2/team/app/manifests/"+tag) {
				t.Errorf("the registry serves %s", tag)
			}
		}
		if resp, body := do(t, http.MethodPut, e.URL("/v2/team/app/manifests/"+man.Digest.String()+"?tag=x"+strings.Repeat("&tag=x", 64)),
			man.Raw, http.Header{"Content-Type": {man.MediaType}}); resp.StatusCode != http.StatusRequestURITooLong {
			t.Errorf("65 tag parameters: %d %s, want 414", resp.StatusCode, body)
		}
	})
}

// chain pushes by digest a chain of n indexes over img, each naming the one
// below, of mediaType (OCI index or Docker manifest list), and returns the
// top index and every digest in the chain, top first, ending with img's
// manifest.
func chain(t *testing.T, e *Env, repo string, img Manifest, n int, mediaType string) (Manifest, []digest.Digest) {
	t.Helper()
	below := img
	all := []digest.Digest{img.Digest}
	for i := range n {
		doc := map[string]any{
			"schemaVersion": 2, "mediaType": mediaType,
			"manifests": []map[string]any{{"mediaType": below.MediaType, "digest": below.Digest, "size": len(below.Raw),
				"platform": map[string]string{"os": "linux", "architecture": "amd64"}}},
			"annotations": map[string]string{"level": fmt.Sprint(i)},
		}
		raw, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		idx := Manifest{Raw: raw, MediaType: mediaType, Digest: digest.FromBytes(raw)}
		if resp, body := putManifest(t, e.Addr, "/v2/"+repo+"/manifests/"+idx.Digest.String(), idx); resp.StatusCode != http.StatusCreated {
			t.Fatalf("push index level %d: %d %s", i, resp.StatusCode, body)
		}
		below = idx
		all = append([]digest.Digest{idx.Digest}, all...)
	}
	return below, all
}

// TestDeepIndexFullyProtected ensures an immutable tag on an index chain
// six deep protects every manifest and blob at the bottom, for OCI indexes
// and Docker manifest lists alike: the walk has no depth limit.
func TestDeepIndexFullyProtected(t *testing.T) {
	t.Parallel()
	for name, mt := range map[string]string{"oci-index": "application/vnd.oci.image.index.v1+json",
		"docker-manifest-list": "application/vnd.docker.distribution.manifest.list.v2+json"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			forEachMode(t, func(t *testing.T, m Mode) {
				e := MustEnv(t, m)
				img := MustImage(t)
				MustPushByDigest(t, e.Addr, "team/deep", img)
				top, all := chain(t, e, "team/deep", MustManifest(t, img), 6, mt)
				if resp, body := putManifest(t, e.Addr, "/v2/team/deep/manifests/1.0", top); resp.StatusCode != http.StatusCreated {
					t.Fatalf("tag the top index: %d %s", resp.StatusCode, body)
				}
				leaf := all[len(all)-1]
				layer := mustLayers(t, img)[1]
				for _, c := range []struct{ what, path string }{
					{"manifest", "/v2/team/deep/manifests/" + leaf.String()},
					{"manifest", "/v2/team/deep/manifests/" + all[3].String()},
					{"blob", "/v2/team/deep/blobs/" + layer.String()},
				} {
					resp, body := do(t, http.MethodDelete, e.URL(c.path), nil, nil)
					attempted := digest.Digest(c.path[strings.LastIndex(c.path, "/")+1:])
					wantDenied(t, parseOCI(t, resp.StatusCode, body), protectRefusal("team/deep:1.0", top.Digest, attempted, c.what))
					if !e.served(t, c.path) {
						t.Errorf("%s is gone after a refused delete", c.path)
					}
				}
			})
		})
	}
}

// TestOversizedGraphRefusedEarly ensures a push whose index names more
// child manifests than taglock walks is refused with 400 before taglock
// makes a single lookup, instead of binding what it could not protect.
func TestOversizedGraphRefusedEarly(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := NewEnv(t, m)
		var lookups atomic.Int64
		e.InjectFaults(t, func(r *http.Request) *Fault {
			lookups.Add(1)
			return nil
		})
		e.Start(t)
		var children []map[string]any
		for i := range 5000 {
			children = append(children, map[string]any{"mediaType": "application/vnd.oci.image.manifest.v1+json",
				"digest": digest.FromString(fmt.Sprint("child-", i)), "size": 100})
		}
		raw, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": children})
		idx := Manifest{Raw: raw, MediaType: "application/vnd.oci.image.index.v1+json", Digest: digest.FromBytes(raw)}
		resp, body := putManifest(t, e.Addr, "/v2/team/wide/manifests/1.0", idx)
		if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusBadRequest || oe.Code != "MANIFEST_INVALID" ||
			!strings.Contains(oe.Message, "more than 1000 child manifests") {
			t.Errorf("index of 5000 children: %d %s %q, want 400 MANIFEST_INVALID naming the bound", oe.Status, oe.Code, oe.Message)
		}
		if n := lookups.Load(); n > 1 {
			t.Errorf("taglock made %d upstream requests for a graph it refuses; want at most the tag lookup", n)
		}
		if _, err := e.Ledger().Binding(t.Context(), "team/wide", "1.0"); !errors.Is(err, storage.ErrNotFound) {
			t.Errorf("a refused push left a binding: %v", err)
		}
	})
}

// TestTagScopedDeleteRightCannotDeleteByDigest ensures a right to delete
// some tags is not a right to delete others' tags by digest, nor blobs.
func TestTagScopedDeleteRightCannotDeleteByDigest(t *testing.T) {
	t.Parallel()
	users := map[string]string{"alice": "alice-secret", "mallory": "mallory-secret"}
	htpasswd := mustHtpasswd(t, users)
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m, func(c *config.Config) {
			// Mutable tags: only the access rules stand between mallory
			// and alice's tag.
			c.Immutability.Rules = []config.ImmutabilityRule{{Repositories: []string{"shared/**"}, Mode: "mutable"}}
			c.Auth = config.Auth{Mode: "htpasswd", Htpasswd: config.HtpasswdAuth{Path: htpasswd}}
			c.Access = []config.AccessRule{
				{Subjects: []string{"mallory"}, Repositories: []string{"shared/**"}, Tags: []string{"mallory-*"}, Actions: []string{"pull", "push", "delete"}},
				{Subjects: []string{"alice"}, Repositories: []string{"**"}, Actions: []string{"pull", "push", "delete"}},
			}
		})
		login := func(u string) http.Header {
			return http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+users[u]))}}
		}
		img := MustImage(t)
		if err := remote.Write(e.Ref(t, "shared/app:latest"), img, append(ggcrOpts(t), remote.WithAuth(basicAuth("alice", users["alice"])))...); err != nil {
			t.Fatalf("alice pushes latest: %v", err)
		}
		d := MustDigest(t, img)
		for _, path := range []string{"/v2/shared/app/manifests/latest", "/v2/shared/app/manifests/" + d.String(),
			"/v2/shared/app/blobs/" + mustLayers(t, img)[0].String()} {
			resp, body := do(t, http.MethodDelete, e.URL(path), nil, login("mallory"))
			if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusForbidden || oe.Code != "DENIED" {
				t.Errorf("mallory DELETE %s: %d %s %q, want 403 DENIED", path, oe.Status, oe.Code, oe.Message)
			}
		}
		if desc, err := remote.Head(e.Ref(t, "shared/app:latest"), append(ggcrOpts(t), remote.WithAuth(basicAuth("alice", users["alice"])))...); err != nil || desc.Digest.String() != d.String() {
			t.Errorf("latest after mallory's deletes: %v, %v; want %s", desc, err, d)
		}
		if b, err := e.Ledger().Binding(t.Context(), "shared/app", "latest"); err != nil || b.Deleted {
			t.Errorf("latest after mallory's deletes: %+v, %v; want live", b, err)
		}
		// A tag of her own on the same digest still does not let her
		// delete alice's.
		if err := remote.Tag(mustRef(t, e.Addr, "shared/app:mallory-1").Context().Tag("mallory-1"), img,
			append(ggcrOpts(t), remote.WithAuth(basicAuth("mallory", users["mallory"])))...); err != nil {
			t.Fatalf("mallory tags her own: %v", err)
		}
		resp, body := do(t, http.MethodDelete, e.URL("/v2/shared/app/manifests/"+d.String()), nil, login("mallory"))
		if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusForbidden {
			t.Errorf("mallory DELETE by digest with a tag of her own on it: %d %q, want 403", oe.Status, oe.Message)
		}
		// alice may delete by digest; both tags go and are recorded.
		if resp, body := do(t, http.MethodDelete, e.URL("/v2/shared/app/manifests/"+d.String()), nil, login("alice")); resp.StatusCode != http.StatusAccepted {
			t.Fatalf("alice DELETE by digest: %d %s", resp.StatusCode, body)
		}
		for _, tag := range []string{"latest", "mallory-1"} {
			if b, err := e.Ledger().Binding(t.Context(), "shared/app", tag); err != nil || !b.Deleted {
				t.Errorf("%s after alice's delete: %+v, %v; want a tombstone", tag, b, err)
			}
		}
	})
}

// TestUnverifiedIdentityMarked ensures that with authentication off, a name
// a request merely claims is recorded and shown as unverified.
func TestUnverifiedIdentityMarked(t *testing.T) {
	t.Parallel()
	e := MustEnv(t, Embedded)
	claims := base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"release-bot"}`))
	jwt := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + claims + "."
	img := MustImage(t)
	MustPushByDigest(t, e.Addr, "team/app", img)
	man := MustManifest(t, img)
	resp, body := do(t, http.MethodPut, e.URL("/v2/team/app/manifests/1.0"), man.Raw,
		http.Header{"Content-Type": {man.MediaType}, "Authorization": {"Bearer " + jwt}})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %d %s", resp.StatusCode, body)
	}
	b, err := e.Ledger().Binding(t.Context(), "team/app", "1.0")
	if err != nil || b.PushedBy != "release-bot (unverified)" {
		t.Errorf("binding pushed by %q (%v), want %q", b.PushedBy, err, "release-bot (unverified)")
	}
	other := MustManifest(t, MustImage(t))
	resp, body = putManifest(t, e.Addr, "/v2/team/app/manifests/1.0", other)
	if oe := parseOCI(t, resp.StatusCode, body); !strings.Contains(oe.Message, "by release-bot (unverified)") {
		t.Errorf("refusal %q does not mark the first pusher as unverified", oe.Message)
	}
}

func basicAuth(user, password string) authn.Authenticator {
	return &authn.Basic{Username: user, Password: password}
}

// TestGarbageCollectionKeepsDeepGraphs ensures the embedded registry's
// garbage collection marks a tagged graph however deep it is: an index chain
// ten deep keeps its bottom image's blobs through a retention run.
func TestGarbageCollectionKeepsDeepGraphs(t *testing.T) {
	t.Parallel()
	e := MustEnv(t, Embedded, func(c *config.Config) {
		c.Immutability.Rules = []config.ImmutabilityRule{{Tags: []string{"scratch-*"}, Mode: "mutable"}}
		c.Retention.Policies = []config.RetentionPolicy{{Repositories: []string{"team/**"},
			Keep: []config.KeepRule{{Tags: []string{"deep"}}}, Untagged: "delete"}}
	})
	img := MustImage(t)
	MustPushByDigest(t, e.Addr, "team/deep", img)
	top, all := chain(t, e, "team/deep", MustManifest(t, img), 10, "application/vnd.oci.image.index.v1+json")
	if resp, body := putManifest(t, e.Addr, "/v2/team/deep/manifests/deep", top); resp.StatusCode != http.StatusCreated {
		t.Fatalf("tag the top index: %d %s", resp.StatusCode, body)
	}
	MustPush(t, e.Addr, "team/deep:scratch-1", MustImage(t)) // something for the run to delete
	c := admin.NewClient(e.srv.AdminSocket())
	res, err := c.RetentionApply(t.Context())
	if err != nil || res.GC == nil || res.GC.BlobsDeleted == 0 {
		t.Fatalf("retention apply: %+v, %v; want a garbage collection that deleted the scratch image's blobs", res.GC, err)
	}
	for _, d := range all {
		if !e.served(t, "/v2/team/deep/manifests/"+d.String()) {
			t.Errorf("manifest %s of the chain is gone", d)
		}
	}
	pulled, err := remote.Image(e.Ref(t, "team/deep@"+all[len(all)-1].String()), ggcrOpts(t)...)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := pulled.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err == nil {
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
		}
		if err != nil {
			t.Errorf("the bottom image's layer does not pull after garbage collection: %v", err)
		}
	}
}

// index returns an OCI index naming the manifests ms, pushed by digest to
// repo.
func index(t *testing.T, e *Env, repo string, ms ...Manifest) Manifest {
	t.Helper()
	var entries []map[string]any
	for _, m := range ms {
		entries = append(entries, map[string]any{"mediaType": m.MediaType, "digest": m.Digest, "size": len(m.Raw)})
	}
	raw, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries})
	if err != nil {
		t.Fatal(err)
	}
	idx := Manifest{Raw: raw, MediaType: "application/vnd.oci.image.index.v1+json", Digest: digest.FromBytes(raw)}
	if resp, body := putManifest(t, e.Addr, "/v2/"+repo+"/manifests/"+idx.Digest.String(), idx); resp.StatusCode != http.StatusCreated {
		t.Fatalf("push index by digest: %d %s", resp.StatusCode, body)
	}
	return idx
}

// TestIndexOverMissingContentRefused ensures a tag is never bound to an
// index whose graph no longer pulls whole: the registry checks only an
// index's direct children, so taglock checks what lies below them, after it
// holds the graph, and refuses with 400 when a layer or a grandchild is
// gone, whether it went long before or at the same moment.
func TestIndexOverMissingContentRefused(t *testing.T) {
	t.Parallel()
	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		t.Run("a child's layer deleted before", func(t *testing.T) {
			img := MustImage(t)
			MustPushByDigest(t, e.Addr, "team/idx", img)
			layer := mustLayers(t, img)[0]
			if resp, body := do(t, http.MethodDelete, e.URL("/v2/team/idx/blobs/"+layer.String()), nil, nil); resp.StatusCode != http.StatusAccepted {
				t.Fatalf("delete the unprotected layer: %d %s", resp.StatusCode, body)
			}
			idx := index(t, e, "team/idx", MustManifest(t, img))
			resp, body := putManifest(t, e.Addr, "/v2/team/idx/manifests/v1", idx)
			if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusBadRequest || oe.Code != "MANIFEST_BLOB_UNKNOWN" || !strings.Contains(oe.Message, layer.String()) {
				t.Errorf("tag an index whose child lost a layer: %d %s %q, want 400 MANIFEST_BLOB_UNKNOWN naming %s", oe.Status, oe.Code, oe.Message, layer)
			}
			if _, err := e.Ledger().Binding(t.Context(), "team/idx", "v1"); !errors.Is(err, storage.ErrNotFound) {
				t.Errorf("a refused push left a binding: %v", err)
			}
		})
		t.Run("a grandchild deleted before", func(t *testing.T) {
			img := MustImage(t)
			MustPushByDigest(t, e.Addr, "team/idx", img)
			child := index(t, e, "team/idx", MustManifest(t, img))
			if resp, body := do(t, http.MethodDelete, e.URL("/v2/team/idx/manifests/"+MustDigest(t, img).String()), nil, nil); resp.StatusCode != http.StatusAccepted {
				t.Fatalf("delete the unprotected grandchild: %d %s", resp.StatusCode, body)
			}
			top := index(t, e, "team/idx", child)
			resp, body := putManifest(t, e.Addr, "/v2/team/idx/manifests/v2", top)
			if oe := parseOCI(t, resp.StatusCode, body); oe.Status != http.StatusBadRequest || oe.Code != "MANIFEST_BLOB_UNKNOWN" {
				t.Errorf("tag an index whose grandchild is gone: %d %s %q, want 400 MANIFEST_BLOB_UNKNOWN", oe.Status, oe.Code, oe.Message)
			}
		})
		t.Run("a child's layer deleted at the same moment", func(t *testing.T) {
			var won, lost int
			for i := range 60 {
				img, err := random.Image(64, 1)
				if err != nil {
					t.Fatal(err)
				}
				MustPushByDigest(t, e.Addr, "team/idxrace", img)
				layer := mustLayers(t, img)[0]
				idx := index(t, e, "team/idxrace", MustManifest(t, img))
				tag := fmt.Sprintf("v%d", i)
				st := together(t,
					send(t, http.MethodDelete, e.URL("/v2/team/idxrace/blobs/"+layer.String()), nil),
					send(t, http.MethodPut, e.URL("/v2/team/idxrace/manifests/"+tag), &idx))
				if st[1] != http.StatusCreated {
					continue
				}
				won++
				if !e.served(t, "/v2/team/idxrace/blobs/"+layer.String()) {
					lost++
					t.Errorf("round %d: the index push got 201 and the layer delete %d; the layer is gone", i, st[0])
				}
			}
			t.Logf("60 rounds: %d index pushes answered 201, %d lost a layer", won, lost)
		})
	})
}
