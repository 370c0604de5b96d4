package proxy

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/taglock/taglock/policy"
)

// TestNeeds ensures each endpoint asks for the action the access rules
// decide on, on the parsed repository, and that a manifest PUT is decided
// on every tag it writes: the path's and each ?tag=.
func TestNeeds(t *testing.T) {
	t.Parallel()
	d := "sha256:" + fmt.Sprintf("%064x", 1)
	tests := []struct {
		method, uri string
		want        []need
	}{
		{http.MethodGet, "/v2/", nil},
		{http.MethodGet, "/v2/_catalog", nil},
		{http.MethodGet, "/v2/a/b/tags/list", []need{{policy.Pull, "a/b", ""}}},
		{http.MethodHead, "/v2/a/manifests/v1", []need{{policy.Pull, "a", "v1"}}},
		{http.MethodGet, "/v2/a/manifests/" + d, []need{{policy.Pull, "a", ""}}},
		{http.MethodGet, "/v2/a/blobs/" + d, []need{{policy.Pull, "a", ""}}},
		{http.MethodGet, "/v2/a/referrers/" + d, []need{{policy.Pull, "a", ""}}},
		{http.MethodPut, "/v2/a/manifests/v1", []need{{policy.Push, "a", "v1"}}},
		{http.MethodPut, "/v2/a/manifests/" + d, []need{{policy.Push, "a", ""}}},
		{http.MethodPut, "/v2/a/manifests/" + d + "?tag=v2&tag=latest", []need{{policy.Push, "a", "latest"}, {policy.Push, "a", "v2"}}},
		{http.MethodPut, "/v2/a/manifests/v1?tag=v1&tag=v3", []need{{policy.Push, "a", "v1"}, {policy.Push, "a", "v3"}}},
		{http.MethodDelete, "/v2/a/manifests/v1", []need{{policy.Delete, "a", "v1"}}},
		{http.MethodDelete, "/v2/a/blobs/" + d, []need{{policy.Delete, "a", ""}}},
		{http.MethodPost, "/v2/a/blobs/uploads/?mount=" + d + "&from=b", []need{{policy.Push, "a", ""}}},
		{http.MethodPatch, "/v2/a/blobs/uploads/abc", []need{{policy.Push, "a", ""}}},
		{http.MethodGet, "/v2/a/blobs/uploads/abc", []need{{policy.Push, "a", ""}}},
	}
	for _, tc := range tests {
		rt, err := ParseRequest(tc.method, tc.uri)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.uri, err)
		}
		got := needs(rt)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s %s: needs %v, want %v", tc.method, tc.uri, got, tc.want)
		}
	}
}
