package proxy

import (
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"
)

// Digests used throughout the parser tests.
var (
	d256  = digest.FromString("taglock")
	d512  = digest.SHA512.FromString("taglock")
	d256b = digest.FromString("other")
)

// session is an upload session identifier as Distribution spells it.
const session = "4b1d9a2e-3c5f-4e6a-9b0c-7d8e9f0a1b2c"

// parseOK parses a request the test expects to be accepted.
func parseOK(t *testing.T, method, uri string) Route {
	t.Helper()
	rt, err := ParseRequest(method, uri)
	if err != nil {
		t.Fatalf("ParseRequest(%s, %q) = %v, want a route", method, uri, err)
	}
	return rt
}

// refusal returns the spec code and HTTP status a parse error carries.
func refusal(t *testing.T, err error) (errcode.ErrorCode, int) {
	t.Helper()
	var re *requestError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not a request error", err, err)
	}
	return re.code, re.status
}

// checkFixedPoint fails unless parsing the route's rebuilt URL gives the
// same route again.
func checkFixedPoint(t *testing.T, rt Route) {
	t.Helper()
	uri := rt.URL().RequestURI()
	again, err := ParseRequest(rt.Method, uri)
	if err != nil {
		t.Fatalf("rebuilt URI %q does not parse: %v", uri, err)
	}
	if !reflect.DeepEqual(again, rt) {
		t.Fatalf("rebuilt URI %q parses to %+v, want %+v", uri, again, rt)
	}
}

// acceptCase is a spelling a real client sends and the route it means.
type acceptCase struct {
	name   string
	method string
	uri    string
	want   Route
	// rebuilt is the request URI forwarded upstream.
	rebuilt string
}

func acceptCases() []acceptCase {
	none := url.Values{}
	q := func(kv ...string) url.Values {
		v := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		return v
	}
	long := strings.Repeat("a", 127) + "/" + strings.Repeat("b", 127) // 255
	tag128 := "T" + strings.Repeat("x", 127)
	return []acceptCase{
		// Ping (end-1).
		{"ping", "GET", "/v2/", Route{Kind: KindPing, Method: "GET", Query: none}, "/v2/"},
		{"ping without slash", "GET", "/v2", Route{Kind: KindPing, Method: "GET", Query: none}, "/v2/"},
		{"ping head", "HEAD", "/v2/", Route{Kind: KindPing, Method: "HEAD", Query: none}, "/v2/"},
		{"ping drops query", "GET", "/v2/?foo=bar", Route{Kind: KindPing, Method: "GET", Query: none}, "/v2/"},

		// Catalog.
		{"catalog", "GET", "/v2/_catalog", Route{Kind: KindCatalog, Method: "GET", Query: none}, "/v2/_catalog"},
		{"catalog paginated", "GET", "/v2/_catalog?n=100&last=a/b",
			Route{Kind: KindCatalog, Method: "GET", Query: q("n", "100", "last", "a/b")}, "/v2/_catalog?last=a%2Fb&n=100"},
		{"catalog empty last", "GET", "/v2/_catalog?n=0&last=",
			Route{Kind: KindCatalog, Method: "GET", Query: q("n", "0")}, "/v2/_catalog?n=0"},

		// Tags (end-8a, end-8b).
		{"tags list", "GET", "/v2/a/b/c/tags/list?n=10",
			Route{Kind: KindTags, Method: "GET", Name: "a/b/c", Query: q("n", "10")}, "/v2/a/b/c/tags/list?n=10"},
		{"tags list last", "GET", "/v2/library/busybox/tags/list?n=2&last=1.36.1",
			Route{Kind: KindTags, Method: "GET", Name: "library/busybox", Query: q("n", "2", "last", "1.36.1")},
			"/v2/library/busybox/tags/list?last=1.36.1&n=2"},

		// Manifests (end-2, end-3, end-7, end-9).
		{"manifest by tag", "GET", "/v2/library/busybox/manifests/latest",
			Route{Kind: KindManifest, Method: "GET", Name: "library/busybox", Tag: "latest", Query: none},
			"/v2/library/busybox/manifests/latest"},
		{"manifest head by sha256", "HEAD", "/v2/x/manifests/" + d256.String(),
			Route{Kind: KindManifest, Method: "HEAD", Name: "x", Digest: d256, Query: none}, "/v2/x/manifests/" + d256.String()},
		{"manifest by sha512", "GET", "/v2/x/manifests/" + d512.String(),
			Route{Kind: KindManifest, Method: "GET", Name: "x", Digest: d512, Query: none}, "/v2/x/manifests/" + d512.String()},
		{"manifest get ignores tag parameter", "GET", "/v2/x/manifests/v1?tag=v2",
			Route{Kind: KindManifest, Method: "GET", Name: "x", Tag: "v1", Query: none}, "/v2/x/manifests/v1"},
		{"manifest put by tag", "PUT", "/v2/team/app/manifests/1.0.0",
			Route{Kind: KindManifest, Method: "PUT", Name: "team/app", Tag: "1.0.0", Tags: []string{"1.0.0"}, Query: none},
			"/v2/team/app/manifests/1.0.0"},
		{"manifest put by digest", "PUT", "/v2/x/manifests/" + d256.String(),
			Route{Kind: KindManifest, Method: "PUT", Name: "x", Digest: d256, Query: none}, "/v2/x/manifests/" + d256.String()},
		{"manifest put by digest with tags", "PUT", "/v2/x/manifests/" + d256.String() + "?tag=b&tag=a&tag=b",
			Route{Kind: KindManifest, Method: "PUT", Name: "x", Digest: d256, Tags: []string{"a", "b"}, Query: url.Values{"tag": {"b", "a", "b"}}},
			"/v2/x/manifests/" + d256.String() + "?tag=b&tag=a&tag=b"},
		{"manifest delete by tag", "DELETE", "/v2/x/manifests/v1",
			Route{Kind: KindManifest, Method: "DELETE", Name: "x", Tag: "v1", Query: none}, "/v2/x/manifests/v1"},
		{"manifest delete by digest", "DELETE", "/v2/x/manifests/" + d256.String(),
			Route{Kind: KindManifest, Method: "DELETE", Name: "x", Digest: d256, Query: none}, "/v2/x/manifests/" + d256.String()},
		{"tag of 128 characters", "GET", "/v2/x/manifests/" + tag128,
			Route{Kind: KindManifest, Method: "GET", Name: "x", Tag: tag128, Query: none}, "/v2/x/manifests/" + tag128},
		{"upper-case tag", "GET", "/v2/x/manifests/V1_rc.2-x",
			Route{Kind: KindManifest, Method: "GET", Name: "x", Tag: "V1_rc.2-x", Query: none}, "/v2/x/manifests/V1_rc.2-x"},
		{"cosign tag", "PUT", "/v2/x/manifests/sha256-" + d256.Encoded() + ".sig",
			Route{Kind: KindManifest, Method: "PUT", Name: "x", Tag: "sha256-" + d256.Encoded() + ".sig",
				Tags: []string{"sha256-" + d256.Encoded() + ".sig"}, Query: none},
			"/v2/x/manifests/sha256-" + d256.Encoded() + ".sig"},

		// Blobs (end-2, end-10).
		{"blob get", "GET", "/v2/x/blobs/" + d256.String(),
			Route{Kind: KindBlob, Method: "GET", Name: "x", Digest: d256, Query: none}, "/v2/x/blobs/" + d256.String()},
		{"blob head", "HEAD", "/v2/x/blobs/" + d512.String(),
			Route{Kind: KindBlob, Method: "HEAD", Name: "x", Digest: d512, Query: none}, "/v2/x/blobs/" + d512.String()},
		{"blob delete", "DELETE", "/v2/x/blobs/" + d256.String(),
			Route{Kind: KindBlob, Method: "DELETE", Name: "x", Digest: d256, Query: none}, "/v2/x/blobs/" + d256.String()},

		// Uploads (end-4a, end-4b, end-5, end-6, end-11, end-13).
		{"upload start", "POST", "/v2/x/blobs/uploads/",
			Route{Kind: KindUploadStart, Method: "POST", Name: "x", Query: none}, "/v2/x/blobs/uploads/"},
		{"upload start without slash", "POST", "/v2/x/blobs/uploads",
			Route{Kind: KindUploadStart, Method: "POST", Name: "x", Query: none}, "/v2/x/blobs/uploads/"},
		{"monolithic upload", "POST", "/v2/x/blobs/uploads/?digest=" + d256.String(),
			Route{Kind: KindUploadStart, Method: "POST", Name: "x", Query: q("digest", d256.String())},
			"/v2/x/blobs/uploads/?digest=" + url.QueryEscape(d256.String())},
		{"cross-repository mount", "POST", "/v2/x/blobs/uploads/?mount=" + d256.String() + "&from=other/repo",
			Route{Kind: KindUploadStart, Method: "POST", Name: "x", Query: q("mount", d256.String(), "from", "other/repo")},
			"/v2/x/blobs/uploads/?from=other%2Frepo&mount=" + url.QueryEscape(d256.String())},
		{"upload start drops unknown parameters", "POST", "/v2/x/blobs/uploads/?foo=bar",
			Route{Kind: KindUploadStart, Method: "POST", Name: "x", Query: none}, "/v2/x/blobs/uploads/"},
		{"upload chunk", "PATCH", "/v2/x/blobs/uploads/" + session + "?_state=c3RhdGU%3D",
			Route{Kind: KindUpload, Method: "PATCH", Name: "x", Session: session, Query: q("_state", "c3RhdGU=")},
			"/v2/x/blobs/uploads/" + session + "?_state=c3RhdGU%3D"},
		{"upload close", "PUT", "/v2/x/blobs/uploads/" + session + "?_state=abc&digest=" + d256.String(),
			Route{Kind: KindUpload, Method: "PUT", Name: "x", Session: session, Query: q("_state", "abc", "digest", d256.String())},
			"/v2/x/blobs/uploads/" + session + "?_state=abc&digest=" + url.QueryEscape(d256.String())},
		{"upload status", "GET", "/v2/x/blobs/uploads/" + session,
			Route{Kind: KindUpload, Method: "GET", Name: "x", Session: session, Query: none}, "/v2/x/blobs/uploads/" + session},
		{"upload cancel", "DELETE", "/v2/x/blobs/uploads/" + session,
			Route{Kind: KindUpload, Method: "DELETE", Name: "x", Session: session, Query: none}, "/v2/x/blobs/uploads/" + session},

		// Referrers (end-12a, end-12b).
		{"referrers", "GET", "/v2/x/referrers/" + d256.String(),
			Route{Kind: KindReferrers, Method: "GET", Name: "x", Digest: d256, Query: none}, "/v2/x/referrers/" + d256.String()},
		{"referrers filtered", "GET", "/v2/x/referrers/" + d256.String() + "?artifactType=application/vnd.example.sbom",
			Route{Kind: KindReferrers, Method: "GET", Name: "x", Digest: d256, Query: q("artifactType", "application/vnd.example.sbom")},
			"/v2/x/referrers/" + d256.String() + "?artifactType=application%2Fvnd.example.sbom"},
		{"referrers filtered, plus encoded", "GET", "/v2/x/referrers/" + d256.String() + "?artifactType=application%2Fvnd.example.sbom.v1%2Bjson",
			Route{Kind: KindReferrers, Method: "GET", Name: "x", Digest: d256, Query: q("artifactType", "application/vnd.example.sbom.v1+json")},
			"/v2/x/referrers/" + d256.String() + "?artifactType=application%2Fvnd.example.sbom.v1%2Bjson"},

		// Names whose components are endpoint keywords: the last keyword wins.
		{"name manifests", "GET", "/v2/manifests/manifests/latest",
			Route{Kind: KindManifest, Method: "GET", Name: "manifests", Tag: "latest", Query: none}, "/v2/manifests/manifests/latest"},
		{"name with blobs", "GET", "/v2/a/blobs/b/manifests/v1",
			Route{Kind: KindManifest, Method: "GET", Name: "a/blobs/b", Tag: "v1", Query: none}, "/v2/a/blobs/b/manifests/v1"},
		{"name blobs", "GET", "/v2/blobs/blobs/" + d256.String(),
			Route{Kind: KindBlob, Method: "GET", Name: "blobs", Digest: d256, Query: none}, "/v2/blobs/blobs/" + d256.String()},
		{"name uploads", "POST", "/v2/uploads/blobs/uploads/",
			Route{Kind: KindUploadStart, Method: "POST", Name: "uploads", Query: none}, "/v2/uploads/blobs/uploads/"},
		{"name ending in blobs", "PATCH", "/v2/a/blobs/blobs/uploads/" + session,
			Route{Kind: KindUpload, Method: "PATCH", Name: "a/blobs", Session: session, Query: none}, "/v2/a/blobs/blobs/uploads/" + session},
		{"name blobs/uploads", "POST", "/v2/a/blobs/uploads/blobs/uploads/",
			Route{Kind: KindUploadStart, Method: "POST", Name: "a/blobs/uploads", Query: none}, "/v2/a/blobs/uploads/blobs/uploads/"},
		{"name tags", "GET", "/v2/tags/tags/list",
			Route{Kind: KindTags, Method: "GET", Name: "tags", Query: none}, "/v2/tags/tags/list"},
		{"name tags/list", "GET", "/v2/a/tags/list/manifests/v1",
			Route{Kind: KindManifest, Method: "GET", Name: "a/tags/list", Tag: "v1", Query: none}, "/v2/a/tags/list/manifests/v1"},
		{"name referrers", "GET", "/v2/x/referrers/referrers/" + d256.String(),
			Route{Kind: KindReferrers, Method: "GET", Name: "x/referrers", Digest: d256, Query: none}, "/v2/x/referrers/referrers/" + d256.String()},
		{"name v2", "GET", "/v2/v2/manifests/v2",
			Route{Kind: KindManifest, Method: "GET", Name: "v2", Tag: "v2", Query: none}, "/v2/v2/manifests/v2"},

		// Name grammar edges.
		{"name separators", "GET", "/v2/a.b_c__d---e/f0/manifests/v1",
			Route{Kind: KindManifest, Method: "GET", Name: "a.b_c__d---e/f0", Tag: "v1", Query: none}, "/v2/a.b_c__d---e/f0/manifests/v1"},
		{"name of 255 characters", "GET", "/v2/" + long + "/tags/list",
			Route{Kind: KindTags, Method: "GET", Name: long, Query: none}, "/v2/" + long + "/tags/list"},

		// Absolute-form request target (RFC 9112 section 3.2.2).
		{"absolute form", "GET", "http://registry.example:5000/v2/a/manifests/v1",
			Route{Kind: KindManifest, Method: "GET", Name: "a", Tag: "v1", Query: none}, "/v2/a/manifests/v1"},
		{"absolute form https with query", "GET", "https://[::1]:443/v2/a/tags/list?n=5",
			Route{Kind: KindTags, Method: "GET", Name: "a", Query: q("n", "5")}, "/v2/a/tags/list?n=5"},
	}
}

// TestParseRequestAccepts ensures every spelling a real client sends parses
// to the exact route it means and is forwarded on the expected URL.
func TestParseRequestAccepts(t *testing.T) {
	t.Parallel()
	for _, tc := range acceptCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := parseOK(t, tc.method, tc.uri)
			if !reflect.DeepEqual(rt, tc.want) {
				t.Fatalf("ParseRequest(%s, %q)\n got %+v\nwant %+v", tc.method, tc.uri, rt, tc.want)
			}
			if got := rt.URL().RequestURI(); got != tc.rebuilt {
				t.Errorf("rebuilt URI = %q, want %q", got, tc.rebuilt)
			}
			if got, want := rt.Path(), strings.SplitN(tc.rebuilt, "?", 2)[0]; got != want {
				t.Errorf("Path() = %q, want %q", got, want)
			}
			checkSamePath(t, tc.uri, rt)
		})
	}
}

// TestParseRequestRefuses ensures invalid requests are refused with the
// spec's error code and status, never guessed at.
func TestParseRequestRefuses(t *testing.T) {
	t.Parallel()
	var (
		notFound       = http.StatusNotFound
		methodNotAllow = http.StatusMethodNotAllowed
		bad            = http.StatusBadRequest
		unsupported    = errcode.ErrorCodeUnsupported
		nameInvalid    = errcode.ErrorCodeNameInvalid
		tagInvalid     = errcode.ErrorCodeTagInvalid
		digestInvalid  = errcode.ErrorCodeDigestInvalid
		uploadInvalid  = errcode.ErrorCodeBlobUploadInvalid
		pageInvalid    = errcode.ErrorCodePaginationNumberInvalid
	)
	cases := []struct {
		name, method, uri string
		code              errcode.ErrorCode
		status            int
	}{
		// Not the distribution API: 404.
		{"root", "GET", "/", unsupported, notFound},
		{"v1 API", "GET", "/v1/_ping", unsupported, notFound},
		{"v3 API", "GET", "/v3/", unsupported, notFound},
		{"v2 prefix glued to a name", "GET", "/v2library/busybox/manifests/latest", unsupported, notFound},
		{"v2 prefix glued to catalog", "GET", "/v2_catalog", unsupported, notFound},
		{"name without endpoint", "GET", "/v2/a", unsupported, notFound},
		{"unknown endpoint", "GET", "/v2/a/things/x", unsupported, notFound},
		{"tags without list", "GET", "/v2/a/tags/", unsupported, notFound},
		{"tag list without name", "GET", "/v2/tags/list", unsupported, notFound},
		{"uploads without blobs", "PATCH", "/v2/a/uploads/" + session, unsupported, notFound},
		{"catalog with slash", "GET", "/v2/_catalog/", unsupported, notFound},
		{"healthz", "GET", "/healthz", unsupported, notFound},

		// Unknown or unsupported methods: 405.
		{"unknown method", "BREW", "/v2/", unsupported, methodNotAllow},
		{"lower-case method", "get", "/v2/", unsupported, methodNotAllow},
		{"empty method", "", "/v2/", unsupported, methodNotAllow},
		{"post ping", "POST", "/v2/", unsupported, methodNotAllow},
		{"head catalog", "HEAD", "/v2/_catalog", unsupported, methodNotAllow},
		{"delete tag list", "DELETE", "/v2/a/tags/list", unsupported, methodNotAllow},
		{"post manifest", "POST", "/v2/a/manifests/v1", unsupported, methodNotAllow},
		{"patch manifest", "PATCH", "/v2/a/manifests/v1", unsupported, methodNotAllow},
		{"put blob", "PUT", "/v2/a/blobs/" + d256.String(), unsupported, methodNotAllow},
		{"get upload start", "GET", "/v2/a/blobs/uploads/", unsupported, methodNotAllow},
		{"post upload session", "POST", "/v2/a/blobs/uploads/" + session, unsupported, methodNotAllow},
		{"delete referrers", "DELETE", "/v2/a/referrers/" + d256.String(), unsupported, methodNotAllow},
		{"trace", "TRACE", "/v2/a/manifests/v1", unsupported, methodNotAllow},

		// NAME_INVALID.
		{"upper-case name", "GET", "/v2/Library/busybox/manifests/latest", nameInvalid, bad},
		{"name of 256 characters", "GET", "/v2/" + strings.Repeat("a", 128) + "/" + strings.Repeat("b", 127) + "/tags/list", nameInvalid, bad},
		{"name leading separator", "GET", "/v2/-a/manifests/v1", nameInvalid, bad},
		{"name trailing separator", "GET", "/v2/a_/manifests/v1", nameInvalid, bad},
		{"name triple underscore", "GET", "/v2/a___b/manifests/v1", nameInvalid, bad},
		{"name mixed separators", "GET", "/v2/a._b/manifests/v1", nameInvalid, bad},
		{"name underscore component", "GET", "/v2/_catalog/manifests/v1", nameInvalid, bad},
		{"relative target", "GET", "v2/", nameInvalid, bad},
		{"asterisk target", "OPTIONS", "*", nameInvalid, bad},
		{"authority target", "CONNECT", "registry.example:443", nameInvalid, bad},
		{"percent-encoding", "GET", "/v2/a%2fb/manifests/v1", nameInvalid, bad},
		{"dot segment", "GET", "/v2/a/../b/manifests/v1", nameInvalid, bad},
		{"empty segment", "GET", "/v2/a//b/manifests/v1", nameInvalid, bad},
		{"trailing empty segment", "POST", "/v2/a/blobs/uploads//", nameInvalid, bad},

		// TAG_INVALID.
		{"empty tag", "GET", "/v2/a/manifests/", tagInvalid, bad},
		{"tag leading dash", "GET", "/v2/a/manifests/-v1", tagInvalid, bad},
		{"tag leading dot", "GET", "/v2/a/manifests/.v1", tagInvalid, bad},
		{"tag of 129 characters", "GET", "/v2/a/manifests/" + strings.Repeat("t", 129), tagInvalid, bad},
		{"tag with plus", "PUT", "/v2/a/manifests/v1+x", tagInvalid, bad},
		{"tag parameter invalid", "PUT", "/v2/a/manifests/" + d256.String() + "?tag=ok&tag=-bad", tagInvalid, bad},
		{"tag parameter empty", "PUT", "/v2/a/manifests/" + d256.String() + "?tag=", tagInvalid, bad},
		{"tag parameter next to a path tag", "PUT", "/v2/a/manifests/v1?tag=extra1&tag=extra2", tagInvalid, bad},
		{"one tag parameter next to the same path tag", "PUT", "/v2/a/manifests/v1?tag=v1", tagInvalid, bad},
		{"more tag parameters than accepted", "PUT", "/v2/a/manifests/" + d256.String() + "?tag=t" + strings.Repeat("&tag=t", MaxTagsPerPush), tagInvalid, http.StatusRequestURITooLong},

		// DIGEST_INVALID.
		{"short digest", "GET", "/v2/a/manifests/sha256:abc", digestInvalid, bad},
		{"upper-case hex", "GET", "/v2/a/manifests/sha256:" + strings.ToUpper(d256.Encoded()), digestInvalid, bad},
		{"upper-case algorithm", "GET", "/v2/a/blobs/SHA256:" + d256.Encoded(), digestInvalid, bad},
		{"unknown algorithm", "GET", "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", digestInvalid, bad},
		{"sha512 length with sha256", "GET", "/v2/a/blobs/sha256:" + d512.Encoded(), digestInvalid, bad},
		{"empty algorithm", "GET", "/v2/a/manifests/:" + d256.Encoded(), digestInvalid, bad},
		{"blob by tag", "GET", "/v2/a/blobs/latest", digestInvalid, bad},
		{"empty blob digest", "GET", "/v2/a/blobs/", digestInvalid, bad},
		{"referrers by tag", "GET", "/v2/a/referrers/latest", digestInvalid, bad},
		{"upload digest invalid", "PUT", "/v2/a/blobs/uploads/" + session + "?digest=sha256:zz", digestInvalid, bad},
		{"upload digest twice", "PUT", "/v2/a/blobs/uploads/" + session + "?digest=" + d256.String() + "&digest=" + d256b.String(), digestInvalid, bad},
		{"monolithic digest invalid", "POST", "/v2/a/blobs/uploads/?digest=latest", digestInvalid, bad},
		{"mount not a digest", "POST", "/v2/a/blobs/uploads/?mount=latest&from=b", digestInvalid, bad},

		// BLOB_UPLOAD_INVALID.
		{"session with dollar", "PATCH", "/v2/a/blobs/uploads/a$b", uploadInvalid, bad},
		{"session too long", "PATCH", "/v2/a/blobs/uploads/" + strings.Repeat("s", 513), uploadInvalid, bad},
		{"upload parameter name", "PATCH", "/v2/a/blobs/uploads/" + session + "?a%20b=1", uploadInvalid, bad},

		// PAGINATION_NUMBER_INVALID.
		{"n not a number", "GET", "/v2/_catalog?n=abc", pageInvalid, bad},
		{"n negative", "GET", "/v2/a/tags/list?n=-1", pageInvalid, bad},
		{"n minus zero", "GET", "/v2/a/tags/list?n=-0", pageInvalid, bad},
		{"n with plus", "GET", "/v2/a/tags/list?n=%2B5", pageInvalid, bad},
		{"n empty", "GET", "/v2/a/tags/list?n=", pageInvalid, bad},
		{"n overflows", "GET", "/v2/_catalog?n=99999999999999999999", pageInvalid, bad},

		// Other query errors: UNSUPPORTED 400.
		{"n twice", "GET", "/v2/a/tags/list?n=1&n=2", unsupported, bad},
		{"last not a tag", "GET", "/v2/a/tags/list?last=-x", unsupported, bad},
		{"last not a name", "GET", "/v2/_catalog?last=A", unsupported, bad},
		{"mount twice", "POST", "/v2/a/blobs/uploads/?mount=" + d256.String() + "&mount=" + d256b.String(), unsupported, bad},
		{"from invalid", "POST", "/v2/a/blobs/uploads/?mount=" + d256.String() + "&from=B", nameInvalid, bad},
		{"artifactType with a raw plus, which means space", "GET", "/v2/a/referrers/" + d256.String() + "?artifactType=application/vnd.x+json", unsupported, bad},
		{"artifactType invalid", "GET", "/v2/a/referrers/" + d256.String() + "?artifactType=nope", unsupported, bad},
		{"semicolon in query", "GET", "/v2/_catalog?n=1;last=a", unsupported, bad},
		{"bad escape in query", "GET", "/v2/_catalog?n=%zz", unsupported, bad},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt, err := ParseRequest(tc.method, tc.uri)
			if err == nil {
				t.Fatalf("ParseRequest(%q, %q) = %+v, want %s %d", tc.method, tc.uri, rt, tc.code, tc.status)
			}
			code, status := refusal(t, err)
			if code != tc.code || status != tc.status {
				t.Fatalf("ParseRequest(%q, %q) = %s %d (%v), want %s %d", tc.method, tc.uri, code, status, err, tc.code, tc.status)
			}
			if re := (*requestError)(nil); !errors.As(err, &re) {
				t.Errorf("ParseRequest(%q, %q) = %T, want a *requestError", tc.method, tc.uri, err)
			}
		})
	}
}

// TestRouteRebuildIsFixedPoint ensures that for every accepted request,
// parsing the URL rebuilt from the route gives the same route: what taglock
// forwards means exactly what it decided on.
func TestRouteRebuildIsFixedPoint(t *testing.T) {
	t.Parallel()
	for _, tc := range acceptCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			checkFixedPoint(t, parseOK(t, tc.method, tc.uri))
		})
	}
	// Every method on every endpoint shape, with every parameter family.
	paths := []string{
		"/v2/", "/v2", "/v2/_catalog?n=3&last=x/y", "/v2/a/b/tags/list?n=1&last=v1",
		"/v2/a/manifests/" + d256.String() + "?tag=v2&tag=v3", "/v2/a/manifests/" + d512.String() + "?tag=x",
		"/v2/a/blobs/" + d256.String(), "/v2/a/blobs/uploads?mount=" + d256.String() + "&from=b/c&digest=" + d256b.String(),
		"/v2/a/blobs/uploads/" + session + "?_state=a%2Bb%2F%3D&x=1&x=2&digest=" + d256.String(),
		"/v2/a/referrers/" + d256.String() + "?artifactType=text/plain",
	}
	methods := []string{"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"}
	accepted := 0
	for _, p := range paths {
		for _, m := range methods {
			rt, err := ParseRequest(m, p)
			if err != nil {
				if _, status := refusal(t, err); status != http.StatusMethodNotAllowed {
					t.Errorf("ParseRequest(%s, %q) = %v, want a route or 405", m, p, err)
				}
				continue
			}
			accepted++
			checkFixedPoint(t, rt)
		}
	}
	if accepted < 20 {
		t.Fatalf("only %d method and path pairs were accepted; the property checked too little", accepted)
	}
}

// TestKindString ensures every endpoint has a name for logs and metrics.
func TestKindString(t *testing.T) {
	t.Parallel()
	for k := KindPing; k <= KindReferrers; k++ {
		if k.String() == "" {
			t.Errorf("Kind(%d).String() is empty", k)
		}
	}
	if got := (Route{}).Path(); got != "" {
		t.Errorf("zero Route Path() = %q, want empty", got)
	}
}

// FuzzParseRequest ensures the parser never panics, that every accepted
// route re-parses to itself from its rebuilt URL, that its parts match the
// spec's grammar, and that its path holds no dot segment, empty segment or
// escape.
func FuzzParseRequest(f *testing.F) {
	for _, tc := range acceptCases() {
		f.Add(tc.method, tc.uri)
	}
	for _, s := range []string{
		"/v2/a%2fb/manifests/x", "/v2/../v2/", "/v2//", "/v2/a/blobs/uploads//", "/v2x/a/manifests/v1",
		"http://evil/v2/a/manifests/v1", "http://evil#/v2/", "/v2/a\\b/manifests/v1", "/v2/a;b/manifests/v1",
		"/v2/a/manifests/v1#x", "/v2/_catalog?n=1&n=2", "/v2/a/manifests/" + d256.String() + "?tag=../x",
		"/v2/a/blobs/uploads/?mount=x&from=../../y", "/v2/a/blobs/uploads/s?_state=%00&digest=" + d256.String(),
	} {
		for _, m := range []string{"GET", "PUT", "POST", "PATCH", "DELETE"} {
			f.Add(m, s)
		}
	}
	f.Fuzz(func(t *testing.T, method, uri string) {
		rt, err := ParseRequest(method, uri)
		if err != nil {
			var re *requestError
			if !errors.As(err, &re) {
				t.Fatalf("refusal %v is %T, not a request error", err, err)
			}
			switch re.status {
			case http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed:
			default:
				t.Fatalf("refusal status %d", re.status)
			}
			return
		}
		checkFixedPoint(t, rt)
		checkRouteGrammar(t, rt)
		checkSamePath(t, uri, rt)
	})
}

// checkSamePath fails unless the route is forwarded on the path the request
// spelled. The only differences allowed are the host of an absolute-form
// target and the trailing slash the spec writes after /v2 and
// /blobs/uploads.
func checkSamePath(t *testing.T, uri string, rt Route) {
	t.Helper()
	p, _, _ := strings.Cut(uri, "?")
	if _, rest, ok := strings.Cut(p, "://"); ok && !strings.HasPrefix(p, "/") {
		p = rest[strings.IndexByte(rest, '/'):]
	}
	want := rt.Path()
	switch rt.Kind {
	case KindPing, KindUploadStart:
		if p+"/" == want {
			p = want
		}
	}
	if p != want {
		t.Fatalf("request path %q is forwarded as %q", p, want)
	}
}

// checkRouteGrammar fails unless every part of rt matches the spec's grammar
// and its rebuilt path is plain.
func checkRouteGrammar(t *testing.T, rt Route) {
	t.Helper()
	switch rt.Kind {
	case KindPing, KindCatalog:
		if rt.Name != "" {
			t.Fatalf("%s route has name %q", rt.Kind, rt.Name)
		}
	default:
		if !nameRE.MatchString(rt.Name) || len(rt.Name) > maxNameLength {
			t.Fatalf("name %q does not match the grammar", rt.Name)
		}
	}
	if rt.Tag != "" && !tagRE.MatchString(rt.Tag) {
		t.Fatalf("tag %q does not match the grammar", rt.Tag)
	}
	if rt.Tag != "" && rt.Digest != "" {
		t.Fatalf("route has both tag %q and digest %q", rt.Tag, rt.Digest)
	}
	if rt.Digest != "" {
		if err := rt.Digest.Validate(); err != nil {
			t.Fatalf("digest %q: %v", rt.Digest, err)
		}
	}
	for _, tag := range rt.Tags {
		if !tagRE.MatchString(tag) {
			t.Fatalf("written tag %q does not match the grammar", tag)
		}
	}
	p := rt.Path()
	if !strings.HasPrefix(p, "/v2/") || strings.Contains(p, "//") || strings.ContainsAny(p, "%\\;#?") {
		t.Fatalf("path %q is not plain", p)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			t.Fatalf("path %q has a dot segment", p)
		}
	}
	for i := 0; i < len(p); i++ {
		if p[i] <= 0x20 || p[i] >= 0x7f {
			t.Fatalf("path %q has byte %#x", p, p[i])
		}
	}
}
