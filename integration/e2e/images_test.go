//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// layoutTag is the name every test image carries inside its OCI layout
// (the org.opencontainers.image.ref.name annotation).
const layoutTag = "image"

// testImage is a small, unique OCI image made on the spot (no Docker Hub),
// in the three forms the clients read.
type testImage struct {
	id      string  // unique, lower-case: names it in the Docker daemon
	digest  v1.Hash // digest of its OCI manifest
	layout  string  // OCI image layout holding only this image, tagged layoutTag
	tarball string  // `docker load` archive, tagged dockerName()
	file    string  // a plain file with unique content (what oras pushes), absolute
}

// dockerName is the name the image is loaded under in the Docker daemon.
func (im testImage) dockerName() string { return "taglock-e2e/" + im.id + ":src" }

// makeImage builds a one-layer linux/amd64 OCI image whose layer holds a file
// with random content, so that two calls never make the same image.
func makeImage(t *testing.T) testImage {
	t.Helper()
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		t.Fatal(err)
	}
	id := hex.EncodeToString(raw[:])
	content := []byte("taglock end-to-end test content " + id + "\n")
	dir := t.TempDir()

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "content.txt", Mode: 0o644, Size: int64(len(content)),
		ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	base, err = mutate.ConfigFile(base, &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Created:      v1.Time{Time: time.Unix(0, 0).UTC()},
		RootFS:       v1.RootFS{Type: "layers"},
		Config:       v1.Config{Labels: map[string]string{"taglock.e2e.id": id}},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, History: v1.History{CreatedBy: "taglock e2e", Created: v1.Time{Time: time.Unix(0, 0).UTC()}}})
	if err != nil {
		t.Fatal(err)
	}
	dig, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}

	im := testImage{
		id:      id,
		digest:  dig,
		layout:  filepath.Join(dir, "layout"),
		tarball: filepath.Join(dir, "image.tar"),
		file:    filepath.Join(dir, "files", "content.txt"),
	}
	p, err := layout.Write(im.layout, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": layoutTag})); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(im.dockerName())
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(im.tarball, tag, img); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(im.file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(im.file, content, 0o644); err != nil {
		t.Fatal(err)
	}
	return im
}

// layoutDigest returns the digest of the only manifest in the OCI layout at dir
// (what a client wrote there when it pulled).
func layoutDigest(t testing.TB, dir string) string {
	t.Helper()
	ii, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("read pulled layout: %v", err)
	}
	m, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 {
		t.Fatalf("pulled layout holds %d manifests, want 1", len(m.Manifests))
	}
	return m.Manifests[0].Digest.String()
}

// resolve asks the registry at host which digest repo:tag points to, with
// a HEAD that accepts every manifest media type, and fails the test if the
// tag does not resolve. It is the tests' independent oracle: whatever a CLI
// printed, this is what the registry serves.
func resolve(t testing.TB, host, repo, tag string) string {
	t.Helper()
	d, err := lookup(t, host, repo, tag)
	if err != nil {
		t.Fatalf("resolve %s/%s:%s: %v", host, repo, tag, err)
	}
	return d
}

// manifestAccept lists every manifest media type a registry may hold: a
// lookup without one of them gets 404 for a manifest of that type.
var manifestAccept = strings.Join([]string{
	string(types.OCIManifestSchema1),
	string(types.OCIImageIndex),
	string(types.DockerManifestSchema2),
	string(types.DockerManifestList),
	string(types.DockerManifestSchema1Signed),
	string(types.DockerManifestSchema1),
}, ", ")

// lookup is resolve that returns the error instead of failing. It GETs the
// manifest over plain HTTP and hashes the bytes it receives; a
// Docker-Content-Digest header that disagrees with them is an error too.
func lookup(t testing.TB, host, repo, tag string) (string, error) {
	t.Helper()
	url := "http://" + host + "/v2/" + repo + "/manifests/" + tag
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return "", fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	d := fmt.Sprintf("sha256:%x", sha256.Sum256(body))
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" && h != d {
		return "", fmt.Errorf("GET %s: Docker-Content-Digest %s, but the body hashes to %s", url, h, d)
	}
	return d, nil
}

// wantContains fails the test unless out contains every one of want.
func wantContains(t testing.TB, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s does not contain %q; got:\n%s", what, w, indent(out))
		}
	}
}
