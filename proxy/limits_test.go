package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

// ociErrors decodes an OCI error body.
func ociErrors(t *testing.T, body []byte) []struct{ Code, Message string } {
	t.Helper()
	var doc struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || len(doc.Errors) == 0 {
		t.Fatalf("body %q is not an OCI error", body)
	}
	return doc.Errors
}

// A manifest over the configured limit is refused with 413 SIZE_INVALID
// naming the limit, whether its length is declared or only found by
// reading, and never reaches the registry; one at the limit passes.
func TestMaxManifestSize(t *testing.T) {
	t.Parallel()
	var reached []string
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached = append(reached, r.Method+" "+r.URL.Path)
		w.WriteHeader(http.StatusCreated)
	})
	srv := newTestServer(t, up, Options{MaxManifestSize: 1024})
	manifest := func(size int) []byte {
		b := []byte(`{"schemaVersion":2,"annotations":{"pad":"`)
		b = append(b, bytes.Repeat([]byte("x"), size-len(b)-3)...)
		return append(b, `"}}`...)
	}
	for _, tt := range []struct {
		name     string
		size     int
		declared bool
		want     int
	}{
		{"declared length over the limit", 1025, true, http.StatusRequestEntityTooLarge},
		{"streamed body over the limit", 1025, false, http.StatusRequestEntityTooLarge},
		{"at the limit", 1024, true, http.StatusCreated},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reached = nil
			raw := manifest(tt.size)
			var body io.Reader = bytes.NewReader(raw)
			if !tt.declared {
				body = io.MultiReader(body)
			}
			req := httptest.NewRequest(http.MethodPut, "/v2/team/app/manifests/"+digest.FromBytes(raw).String(), body)
			if !tt.declared {
				req.ContentLength = -1
			}
			req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
			if tt.want == http.StatusCreated {
				if len(reached) != 1 {
					t.Errorf("the manifest at the limit reached the registry %d times", len(reached))
				}
				return
			}
			e := ociErrors(t, rec.Body.Bytes())[0]
			if e.Code != "SIZE_INVALID" || !strings.Contains(e.Message, "1024 byte limit") {
				t.Errorf("error %s %q, want SIZE_INVALID naming the 1024 byte limit", e.Code, e.Message)
			}
			if len(reached) != 0 {
				t.Errorf("the refused manifest reached the registry: %v", reached)
			}
		})
	}
}

// With MaxUploads in flight, one more upload is refused at once with 429
// TOOMANYREQUESTS, Retry-After and an OCI error body, while requests that
// are not uploads pass; the slot is free again when an upload ends.
func TestMaxUploads(t *testing.T) {
	t.Parallel()
	entered, finish := make(chan struct{}), make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPatch {
			entered <- struct{}{}
			<-finish
		}
		w.WriteHeader(http.StatusAccepted)
	})
	srv := newTestServer(t, up, Options{MaxUploads: 1})
	serve := func(method, path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader("data")))
		return rec
	}
	done := make(chan *httptest.ResponseRecorder)
	go func() { done <- serve(http.MethodPatch, "/v2/team/app/blobs/uploads/"+session) }()
	<-entered

	rec := serve(http.MethodPost, "/v2/team/other/blobs/uploads/")
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("upload over the cap: %d, Retry-After %q; want 429 with Retry-After", rec.Code, rec.Header().Get("Retry-After"))
	}
	if e := ociErrors(t, rec.Body.Bytes())[0]; e.Code != "TOOMANYREQUESTS" {
		t.Errorf("error code %s, want TOOMANYREQUESTS", e.Code)
	}
	if rec := serve(http.MethodGet, "/v2/team/app/blobs/uploads/"+session); rec.Code != http.StatusAccepted {
		t.Errorf("upload status while the cap is reached: %d, want it served", rec.Code)
	}
	close(finish)
	if rec := <-done; rec.Code != http.StatusAccepted {
		t.Fatalf("the upload in flight: %d", rec.Code)
	}
	if rec := serve(http.MethodPost, "/v2/team/other/blobs/uploads/"); rec.Code != http.StatusAccepted {
		t.Errorf("upload after the slot was freed: %d, want it served", rec.Code)
	}
}
