package auth

import (
	"net/http"
	"testing"
)

// TestScopeFor ensures each request asks for the token scope of exactly
// its repository and action.
func TestScopeFor(t *testing.T) {
	t.Parallel()
	tests := []struct{ method, path, want string }{
		{http.MethodGet, "/v2/", ""},
		{http.MethodGet, "/v2/_catalog", "registry:catalog:*"},
		{http.MethodGet, "/v2/a/b/manifests/v1", "repository:a/b:pull"},
		{http.MethodHead, "/v2/a/blobs/sha256:00", "repository:a:pull"},
		{http.MethodPut, "/v2/a/manifests/v1", "repository:a:pull,push"},
		{http.MethodPost, "/v2/a/b/blobs/uploads/", "repository:a/b:pull,push"},
		{http.MethodPatch, "/v2/a/blobs/uploads/abc", "repository:a:pull,push"},
		{http.MethodDelete, "/v2/a/manifests/sha256:00", "repository:a:delete"},
		{http.MethodGet, "/v2/x/manifests/tags/list", "repository:x/manifests:pull"},
		{http.MethodGet, "/v2/a/referrers/sha256:00", "repository:a:pull"},
		{http.MethodPatch, "/v2/a/blobs/blobs/uploads/s", "repository:a/blobs:pull,push"},
		{http.MethodGet, "/v2/a/manifests/manifests/v1", "repository:a/manifests:pull"},
	}
	for _, tc := range tests {
		r, _ := http.NewRequest(tc.method, "http://up"+tc.path, nil)
		if got := scopeFor(r); got != tc.want {
			t.Errorf("%s %s: scope %q, want %q", tc.method, tc.path, got, tc.want)
		}
	}
}

// TestParseBearer ensures challenges are read with quoted and bare values,
// and anything that is not Bearer is rejected.
func TestParseBearer(t *testing.T) {
	t.Parallel()
	p, ok := parseBearer(`Bearer realm="https://h/service/token",service="harbor-registry",scope="repository:a,b:pull"`)
	if !ok || p["realm"] != "https://h/service/token" || p["service"] != "harbor-registry" || p["scope"] != "repository:a,b:pull" {
		t.Fatalf("quoted: %v %v", p, ok)
	}
	p, ok = parseBearer(`bearer realm=https://h/t, service=s`)
	if !ok || p["realm"] != "https://h/t" || p["service"] != "s" {
		t.Fatalf("bare: %v %v", p, ok)
	}
	if _, ok := parseBearer(`Basic realm="x"`); ok {
		t.Fatal("a Basic challenge parsed as Bearer")
	}
}
