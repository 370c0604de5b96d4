package proxy

import (
	"net/http"
	"testing"

	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// TestQueryKeysAreExact ensures that a parameter spelled like one the
// endpoint defines but in other letter case is refused rather than dropped,
// on a push by tag as well as by digest, and that case variants of keys an
// endpoint does not define (or defines only for PUT) are still dropped like
// any unknown parameter.
func TestQueryKeysAreExact(t *testing.T) {
	t.Parallel()
	d := d256.String()
	refusals := []struct {
		method, uri string
		code        errcode.ErrorCode
	}{
		{"PUT", "/v2/a/manifests/" + d + "?TAG=v1", errcode.ErrorCodeUnsupported},
		{"PUT", "/v2/a/manifests/" + d + "?Tag=v1", errcode.ErrorCodeUnsupported},
		{"PUT", "/v2/a/manifests/" + d + "?tag=v1&tAg=v2", errcode.ErrorCodeUnsupported},
		{"PUT", "/v2/a/manifests/v1?TAG=v2", errcode.ErrorCodeUnsupported},
		{"GET", "/v2/a/tags/list?N=1", errcode.ErrorCodeUnsupported},
		{"GET", "/v2/a/tags/list?n=1&Last=v1", errcode.ErrorCodeUnsupported},
		{"GET", "/v2/_catalog?LAST=a", errcode.ErrorCodeUnsupported},
		{"POST", "/v2/a/blobs/uploads/?Digest=" + d, errcode.ErrorCodeUnsupported},
		{"POST", "/v2/a/blobs/uploads/?mount=" + d + "&From=b", errcode.ErrorCodeUnsupported},
		{"POST", "/v2/a/blobs/uploads/?MOUNT=" + d + "&from=b", errcode.ErrorCodeUnsupported},
		{"PUT", "/v2/a/blobs/uploads/" + session + "?_state=x&DIGEST=" + d, errcode.ErrorCodeUnsupported},
		{"GET", "/v2/a/referrers/" + d + "?artifacttype=text/plain", errcode.ErrorCodeUnsupported},
	}
	for _, c := range refusals {
		rt, err := ParseRequest(c.method, c.uri)
		if err == nil {
			t.Errorf("%s %.90s was accepted as %+v, want %s", c.method, c.uri, rt, c.code)
			continue
		}
		if code, status := refusal(t, err); code != c.code || status != http.StatusBadRequest {
			t.Errorf("%s %.90s = %s %d (%v), want %s 400", c.method, c.uri, code, status, err, c.code)
		}
	}

	for _, uri := range []string{"/v2/a/blobs/" + d + "?TAG=x&Digest=y", "/v2/a/manifests/v1?TAG=x", "/v2/a/manifests/v1?tag=x"} {
		rt := parseOK(t, "GET", uri)
		if len(rt.Query) != 0 {
			t.Errorf("GET %s keeps %v, want no parameters", uri, rt.Query)
		}
	}
}
