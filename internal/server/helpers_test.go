package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"sync"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/internal/config"
)

// mustStart serves an embedded-mode taglock on a loopback port with the
// default config changed by edit, and stops it at the end of the test.
func mustStart(t *testing.T, edit func(*config.Config)) (*Server, string) {
	t.Helper()
	srv, base := startOnly(t, edit)
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return srv, base
}

// startOnly is mustStart without the clean-up: the test shuts it down.
func startOnly(t *testing.T, edit func(*config.Config)) (*Server, string) {
	t.Helper()
	cfg := config.Default()
	cfg.Listen, cfg.Data = "127.0.0.1:0", filepath.Join(t.TempDir(), "data")
	if edit != nil {
		edit(&cfg)
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatalf("config: %v", errs)
	}
	srv, err := Start(context.Background(), cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return srv, "http://" + srv.Addr()
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// do sends one request and returns the response with its body read.
func do(t *testing.T, method, target, contentType string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", ocispec.MediaTypeImageManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// image uploads a config and one layer holding content to repo through
// base and returns a manifest referencing them.
func image(t *testing.T, base, repo, content string) []byte {
	t.Helper()
	blob := func(b []byte, mediaType string) ocispec.Descriptor {
		d := digest.FromBytes(b)
		resp, _ := do(t, http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/", "", nil)
		loc, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("start upload: %d %v", resp.StatusCode, err)
		}
		q := loc.Query()
		q.Set("digest", d.String())
		loc.RawQuery = q.Encode()
		if resp, _ := do(t, http.MethodPut, base+loc.RequestURI(), "application/octet-stream", b); resp.StatusCode != http.StatusCreated {
			t.Fatalf("upload blob: %d", resp.StatusCode)
		}
		return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
	}
	m, err := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: blob([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`), ocispec.MediaTypeImageConfig),
		Layers: []ocispec.Descriptor{blob([]byte(content), ocispec.MediaTypeImageLayer)}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// push writes repo:tag with content through base and returns the status.
func push(t *testing.T, base, repo, tag, content string) (int, digest.Digest) {
	t.Helper()
	m := image(t, base, repo, content)
	resp, _ := do(t, http.MethodPut, base+"/v2/"+repo+"/manifests/"+tag, ocispec.MediaTypeImageManifest, m)
	return resp.StatusCode, digest.FromBytes(m)
}
