package integration

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
)

// TestMalformedRequestsAreRefused ensures that every request in a catalogue
// of malformed and ambiguous spellings gets the spec's 4xx status and error
// code from taglock itself, and that none of them reaches the registry.
func TestMalformedRequestsAreRefused(t *testing.T) {
	t.Parallel()
	const (
		dockerV2 = "application/vnd.docker.distribution.manifest.v2+json"
		ociIndex = "application/vnd.oci.image.index.v1+json"
	)
	validManifest := []byte(`{"schemaVersion":2,"mediaType":"` + ociIndex + `","manifests":[]}`)
	validDigest := digest.FromBytes(validManifest)
	otherDigest := digest.FromString("something else")
	huge := append(append([]byte(`{"schemaVersion":2,"mediaType":"`+ociIndex+`","annotations":{"x":"`),
		bytes.Repeat([]byte("a"), 4<<20)...), []byte(`"}}`)...)
	ct := http.Header{"Content-Type": {ociIndex}}

	cases := []struct {
		name   string
		req    RawRequest
		status int
		code   string
	}{
		{"percent-encoded slash", RawRequest{Line: "GET /v2/team%2fapp/manifests/x"}, 400, "NAME_INVALID"},
		{"percent-encoded slash, upper case", RawRequest{Line: "GET /v2/team%2Fapp/manifests/x"}, 400, "NAME_INVALID"},
		{"percent-encoded letter", RawRequest{Line: "GET /v2/te%61m/app/manifests/x"}, 400, "NAME_INVALID"},
		{"percent-encoded dots", RawRequest{Line: "GET /v2/team/%2e%2e/app/manifests/x"}, 400, "NAME_INVALID"},
		{"dot-dot segment", RawRequest{Line: "GET /v2/team/../app/manifests/x"}, 400, "NAME_INVALID"},
		{"dot-dot escaping /v2", RawRequest{Line: "GET /v2/../v2/team/app/manifests/x"}, 400, "NAME_INVALID"},
		{"dot segment", RawRequest{Line: "GET /v2/./team/app/manifests/x"}, 400, "NAME_INVALID"},
		{"empty segment", RawRequest{Line: "GET /v2/team//app/manifests/x"}, 400, "NAME_INVALID"},
		{"empty segment before endpoint", RawRequest{Line: "GET /v2/team/app//manifests/x"}, 400, "NAME_INVALID"},
		{"backslash", RawRequest{Line: `GET /v2/team\app/manifests/x`}, 400, "NAME_INVALID"},
		{"semicolon", RawRequest{Line: "GET /v2/team/app;x=1/manifests/x"}, 400, "NAME_INVALID"},
		{"absolute-form with dot-dot", RawRequest{Line: "GET http://registry.example/v2/team/../app/manifests/x"}, 400, "NAME_INVALID"},
		{"upper-case name", RawRequest{Line: "GET /v2/Team/App/manifests/x"}, 400, "NAME_INVALID"},
		{"name with trailing separator", RawRequest{Line: "GET /v2/team-/manifests/x"}, 400, "NAME_INVALID"},
		{"256-character name", RawRequest{Line: "GET /v2/" + strings.Repeat("a", 256) + "/manifests/x"}, 400, "NAME_INVALID"},
		{"256-character name in components", RawRequest{Line: "GET /v2/" + strings.Repeat("abc/", 63) + "abcd/manifests/x"}, 400, "NAME_INVALID"},
		{"bad cross-repository mount source", RawRequest{Line: "POST /v2/team/app/blobs/uploads/?mount=" + validDigest.String() + "&from=Team/Other"}, 400, "NAME_INVALID"},
		{"tag starting with a dash", RawRequest{Line: "GET /v2/team/app/manifests/-1.0"}, 400, "TAG_INVALID"},
		{"tag starting with a dot", RawRequest{Line: "PUT /v2/team/app/manifests/.hidden", Header: ct, Body: validManifest}, 400, "TAG_INVALID"},
		{"129-character tag", RawRequest{Line: "GET /v2/team/app/manifests/" + strings.Repeat("t", 129)}, 400, "TAG_INVALID"},
		{"bad ?tag= parameter", RawRequest{Line: "PUT /v2/team/app/manifests/" + validDigest.String() + "?tag=bad!tag", Header: ct, Body: validManifest}, 400, "TAG_INVALID"},
		{"short digest", RawRequest{Line: "GET /v2/team/app/manifests/sha256:abc"}, 400, "DIGEST_INVALID"},
		{"upper-case digest", RawRequest{Line: "GET /v2/team/app/manifests/sha256:" + strings.ToUpper(validDigest.Encoded())}, 400, "DIGEST_INVALID"},
		{"unknown digest algorithm", RawRequest{Line: "GET /v2/team/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e"}, 400, "DIGEST_INVALID"},
		{"blob reference that is no digest", RawRequest{Line: "DELETE /v2/team/app/blobs/latest"}, 400, "DIGEST_INVALID"},
		{"bad mount digest", RawRequest{Line: "POST /v2/team/app/blobs/uploads/?mount=sha256:zz&from=team/other"}, 400, "DIGEST_INVALID"},
		{"body does not match the URL digest", RawRequest{Line: "PUT /v2/team/app/manifests/" + otherDigest.String(), Header: ct, Body: validManifest}, 400, "DIGEST_INVALID"},
		{"manifest is not JSON", RawRequest{Line: "PUT /v2/team/app/manifests/1.0.0", Header: http.Header{"Content-Type": {dockerV2}}, Body: []byte("{not json")}, 400, "MANIFEST_INVALID"},
		{"manifest without schemaVersion", RawRequest{Line: "PUT /v2/team/app/manifests/1.0.0", Header: ct, Body: []byte(`{"manifests":[]}`)}, 400, "MANIFEST_INVALID"},
		{"manifest with a bad layer digest", RawRequest{Line: "PUT /v2/team/app/manifests/1.0.0", Header: http.Header{"Content-Type": {dockerV2}},
			Body: []byte(`{"schemaVersion":2,"mediaType":"` + dockerV2 + `","config":{"digest":"sha256:nope","size":1},"layers":[]}`)}, 400, "MANIFEST_INVALID"},
		{"manifest over 4 MiB", RawRequest{Line: "PUT /v2/team/app/manifests/1.0.0", Header: ct, Body: huge, Expect100: true}, 413, "SIZE_INVALID"},
		{"manifest over 4 MiB, chunked", RawRequest{Line: "PUT /v2/team/app/manifests/1.0.0", Header: ct, Body: huge, Chunked: true}, 413, "SIZE_INVALID"},
		{"negative page size", RawRequest{Line: "GET /v2/team/app/tags/list?n=-1"}, 400, "PAGINATION_NUMBER_INVALID"},
		{"bad upload session", RawRequest{Line: "PATCH /v2/team/app/blobs/uploads/a!b"}, 400, "BLOB_UPLOAD_INVALID"},
		{"unknown method", RawRequest{Line: "PROPFIND /v2/team/app/manifests/1.0.0"}, 405, "UNSUPPORTED"},
		{"POST to a manifest", RawRequest{Line: "POST /v2/team/app/manifests/1.0.0", Header: ct, Body: validManifest}, 405, "UNSUPPORTED"},
		{"PUT to a blob", RawRequest{Line: "PUT /v2/team/app/blobs/" + validDigest.String(), Body: []byte("x")}, 405, "UNSUPPORTED"},
		{"TRACE on the base", RawRequest{Line: "TRACE /v2/"}, 405, "UNSUPPORTED"},
		{"unknown endpoint", RawRequest{Line: "GET /v2/team/app/things/x"}, 404, "UNSUPPORTED"},
	}

	forEachMode(t, func(t *testing.T, m Mode) {
		e := MustEnv(t, m)
		var before int64
		if e.Up != nil {
			before = e.Up.Requests()
		}
		for _, c := range cases {
			resp, body := sendRaw(t, e.Addr, c.req)
			if resp.StatusCode != c.status {
				t.Errorf("%s (%.80s): status %d %s, want %d %s", c.name, c.req.Line, resp.StatusCode, body, c.status, c.code)
				continue
			}
			if oe := parseOCI(t, resp.StatusCode, body); oe.Code != c.code {
				t.Errorf("%s (%.80s): code %s (%s), want %s", c.name, c.req.Line, oe.Code, oe.Message, c.code)
			}
		}
		if e.Up != nil {
			if n := e.Up.Requests() - before; n != 0 {
				t.Errorf("%d malformed requests reached the upstream, want 0", n)
			}
		}
		// Nothing was created: the registry has no repository and the
		// ledger no record.
		resp, body := do(t, http.MethodGet, e.URL("/v2/_catalog"), nil, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"repositories":[]`)) {
			t.Errorf("catalog after the catalogue: %d %s, want no repositories", resp.StatusCode, body)
		}
		if evs, err := e.Ledger().Recent(t.Context(), "", 0); err != nil || len(evs) != 0 {
			t.Errorf("ledger events = %+v, %v; want none", evs, err)
		}
		if res, err := e.Ledger().Reservations(t.Context()); err != nil || len(res) != 0 {
			t.Errorf("reservations = %+v, %v; want none", res, err)
		}
	})
}
