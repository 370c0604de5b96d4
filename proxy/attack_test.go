package proxy

import (
	"net/http"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"
)

// attempt is one spelling from the catalogue. Either it is refused with
// code and status, or it is accepted and must mean exactly name, tag and
// digest, and be forwarded on path.
type attempt struct {
	why    string
	method string
	uri    string

	// Refused.
	code   errcode.ErrorCode
	status int

	// Accepted (status == 0).
	kind   Kind
	name   string
	tag    string
	digest digest.Digest
	path   string
}

// refused builds a catalogue entry that must be refused.
func refused(why, method, uri string, code errcode.ErrorCode, status int) attempt {
	return attempt{why: why, method: method, uri: uri, code: code, status: status}
}

// means builds a catalogue entry that is accepted with exactly these parts.
func means(why, method, uri string, kind Kind, name, tag string, dgst digest.Digest, path string) attempt {
	return attempt{why: why, method: method, uri: uri, kind: kind, name: name, tag: tag, digest: dgst, path: path}
}

// attackCatalogue lists the spellings attackers and confused clients try.
func attackCatalogue() []attempt {
	const bad, notFound, notAllowed = http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed
	var (
		unsupported   = errcode.ErrorCodeUnsupported
		nameInvalid   = errcode.ErrorCodeNameInvalid
		tagInvalid    = errcode.ErrorCodeTagInvalid
		digestInvalid = errcode.ErrorCodeDigestInvalid
		uploadInvalid = errcode.ErrorCodeBlobUploadInvalid
		pageInvalid   = errcode.ErrorCodePaginationNumberInvalid
		d             = d256.String()
		put           = "/v2/a/manifests/" + d
	)
	return []attempt{
		// Percent-encoded separators and dots.
		refused("encoded slash, lower case", "GET", "/v2/a%2fb/manifests/latest", nameInvalid, bad),
		refused("encoded slash, upper case", "GET", "/v2/a%2Fb/manifests/latest", nameInvalid, bad),
		refused("encoded dot-dot reference", "GET", "/v2/a/manifests/%2e%2e", nameInvalid, bad),
		refused("encoded dot-dot in name", "GET", "/v2/%2e%2e/x/manifests/latest", nameInvalid, bad),
		refused("double-encoded slash", "GET", "/v2/a%252fb/manifests/latest", nameInvalid, bad),
		refused("encoded NUL after tag", "GET", "/v2/a/manifests/latest%00", nameInvalid, bad),
		refused("encoded API prefix", "GET", "/%76%32/a/manifests/latest", nameInvalid, bad),
		refused("encoded digest colon", "GET", "/v2/a/blobs/sha256%3a"+d256.Encoded(), nameInvalid, bad),
		refused("encoded keyword", "PUT", "/v2/a/%6danifests/latest", nameInvalid, bad),
		refused("overlong UTF-8 slash", "GET", "/v2/a%c0%afb/manifests/latest", nameInvalid, bad),

		// Dot segments.
		refused("dot-dot climbing out of /v2", "GET", "/v2/../v2/a/manifests/latest", nameInvalid, bad),
		refused("dot-dot inside the name", "GET", "/v2/a/../b/manifests/latest", nameInvalid, bad),
		refused("dot inside the name", "GET", "/v2/./a/manifests/latest", nameInvalid, bad),
		refused("dot before the keyword", "GET", "/v2/a/./manifests/latest", nameInvalid, bad),
		refused("trailing dot-dot", "DELETE", "/v2/a/manifests/latest/..", nameInvalid, bad),
		refused("trailing dot", "DELETE", "/v2/a/manifests/latest/.", nameInvalid, bad),
		refused("trailing dot after slash", "GET", "/v2/a/tags/list/./", nameInvalid, bad),
		refused("dot-dot as tag", "PUT", "/v2/a/manifests/..", nameInvalid, bad),
		refused("dot-dot as session", "PATCH", "/v2/a/blobs/uploads/..", nameInvalid, bad),
		refused("dot-dot after /v2", "GET", "/v2/..", nameInvalid, bad),
		refused("tag starting with a dot", "PUT", "/v2/a/manifests/.hidden", tagInvalid, bad),

		// Empty segments.
		refused("leading double slash", "GET", "//v2/a/manifests/latest", nameInvalid, bad),
		refused("double slash after /v2", "GET", "/v2//a/manifests/latest", nameInvalid, bad),
		refused("double slash before keyword", "GET", "/v2/a//manifests/latest", nameInvalid, bad),
		refused("double slash before tag", "DELETE", "/v2/a/manifests//latest", nameInvalid, bad),
		refused("double trailing slash on uploads", "POST", "/v2/a/blobs/uploads//", nameInvalid, bad),
		refused("double trailing slash on ping", "GET", "/v2//", nameInvalid, bad),
		refused("trailing slash on tag", "DELETE", "/v2/a/manifests/latest/", unsupported, notFound),
		refused("trailing slash on tag list", "GET", "/v2/a/tags/list/", unsupported, notFound),

		// Backslashes and parameters.
		refused("backslash in name", "GET", "/v2/a\\b/manifests/latest", nameInvalid, bad),
		refused("backslash after /v2", "GET", "/v2\\a/manifests/latest", nameInvalid, bad),
		refused("backslash dot-dot in tag", "PUT", "/v2/a/manifests/latest\\..\\..\\x", nameInvalid, bad),
		refused("matrix parameter in name", "GET", "/v2/a;x=y/manifests/latest", nameInvalid, bad),
		refused("matrix parameter after tag", "PUT", "/v2/a/manifests/latest;jsessionid=1", nameInvalid, bad),
		refused("semicolon query separator", "PUT", put+"?tag=a;tag=b", unsupported, bad),

		// Control characters, whitespace and non-ASCII.
		refused("NUL in name", "GET", "/v2/a\x00b/manifests/latest", nameInvalid, bad),
		refused("CRLF header injection", "GET", "/v2/a/manifests/latest\r\nX-Injected: 1", nameInvalid, bad),
		refused("space in name", "GET", "/v2/a b/manifests/latest", nameInvalid, bad),
		refused("tab in tag", "GET", "/v2/a/manifests/lat\test", nameInvalid, bad),
		refused("DEL byte", "GET", "/v2/a/manifests/latest\x7f", nameInvalid, bad),
		refused("accented name", "GET", "/v2/caf\u00e9/manifests/latest", nameInvalid, bad),
		refused("full-width slash", "GET", "/v2/a\uff0fb/manifests/latest", nameInvalid, bad),
		refused("Cyrillic look-alike", "GET", "/v2/\u0430pp/manifests/latest", nameInvalid, bad),
		refused("right-to-left override", "GET", "/v2/a/manifests/\u202etsetal", nameInvalid, bad),
		refused("invalid UTF-8", "GET", "/v2/a\xff/manifests/latest", nameInvalid, bad),
		refused("LF in query", "GET", "/v2/_catalog?n=1\nX: y", unsupported, bad),
		refused("raw space in query", "GET", "/v2/a/tags/list?last=a b", unsupported, bad),
		refused("encoded NUL as last tag", "GET", "/v2/a/tags/list?last=%00", unsupported, bad),
		refused("non-ASCII in query", "GET", "/v2/_catalog?last=\u00e9", unsupported, bad),

		// Case.
		refused("upper-case name component", "GET", "/v2/Library/busybox/manifests/latest", nameInvalid, bad),
		refused("upper-case API prefix", "GET", "/V2/a/manifests/latest", unsupported, notFound),
		refused("upper-case keyword", "GET", "/v2/a/MANIFESTS/latest", unsupported, notFound),
		refused("upper-case digest algorithm", "GET", "/v2/a/blobs/SHA256:"+d256.Encoded(), digestInvalid, bad),
		refused("upper-case digest hex", "DELETE", "/v2/a/manifests/sha256:"+strings.ToUpper(d256.Encoded()), digestInvalid, bad),
		means("upper-case tag is a valid tag", "GET", "/v2/a/manifests/LATEST", KindManifest, "a", "LATEST", "", "/v2/a/manifests/LATEST"),

		// Length.
		refused("name of 256 characters", "GET", "/v2/"+strings.Repeat("n", 256)+"/manifests/latest", nameInvalid, bad),
		refused("name of 4096 characters", "PUT", "/v2/"+strings.Repeat("n/", 2047)+"n/manifests/latest", nameInvalid, bad),
		means("name of 255 characters", "GET", "/v2/"+strings.Repeat("n", 255)+"/manifests/latest",
			KindManifest, strings.Repeat("n", 255), "latest", "", "/v2/"+strings.Repeat("n", 255)+"/manifests/latest"),
		refused("tag of 129 characters", "PUT", "/v2/a/manifests/"+strings.Repeat("t", 129), tagInvalid, bad),
		refused("session of 513 characters", "PATCH", "/v2/a/blobs/uploads/"+strings.Repeat("s", 513), uploadInvalid, bad),

		// Separators at the edges of names.
		refused("leading dash", "GET", "/v2/-a/manifests/latest", nameInvalid, bad),
		refused("trailing dash", "GET", "/v2/a-/manifests/latest", nameInvalid, bad),
		refused("trailing dot in component", "GET", "/v2/a./manifests/latest", nameInvalid, bad),
		refused("leading underscore", "GET", "/v2/_a/manifests/latest", nameInvalid, bad),
		refused("three underscores", "GET", "/v2/a___b/manifests/latest", nameInvalid, bad),
		refused("component starting with a dot", "GET", "/v2/a/.b/manifests/latest", nameInvalid, bad),
		refused("tag starting with a dash", "PUT", "/v2/a/manifests/-latest", tagInvalid, bad),
		refused("name that is only the keyword path", "GET", "/v2/manifests/latest", unsupported, notFound),
		refused("empty name before blobs", "POST", "/v2/blobs/uploads/", unsupported, notFound),

		// _catalog where a repository goes.
		refused("_catalog as repository", "GET", "/v2/_catalog/manifests/latest", nameInvalid, bad),
		refused("_catalog tag list", "GET", "/v2/_catalog/tags/list", nameInvalid, bad),
		refused("_catalog after a name", "GET", "/v2/a/_catalog", unsupported, notFound),
		refused("_catalog with trailing slash", "GET", "/v2/_catalog/", unsupported, notFound),
		refused("_catalog inside a name", "POST", "/v2/a/_catalog/blobs/uploads/", nameInvalid, bad),
		refused("delete _catalog", "DELETE", "/v2/_catalog", unsupported, notAllowed),

		// /v2 glued to what follows.
		refused("v2 glued to a name", "GET", "/v2x/manifests/latest", unsupported, notFound),
		refused("v2 glued to a path", "PUT", "/v2library/busybox/manifests/latest", unsupported, notFound),

		// Absolute-form and other request targets.
		means("absolute form names a foreign host, which is ignored", "GET", "http://evil/v2/a/manifests/latest",
			KindManifest, "a", "latest", "", "/v2/a/manifests/latest"),
		means("absolute form with upper-case scheme", "HEAD", "HTTP://evil:80/v2/",
			KindPing, "", "", "", "/v2/"),
		refused("absolute form with dot-dot", "GET", "http://evil/v2/../x/manifests/latest", nameInvalid, bad),
		refused("absolute form with encoded slash", "GET", "http://evil/v2/a%2fb/manifests/latest", nameInvalid, bad),
		refused("absolute form hiding the path in a fragment", "GET", "http://evil#/v2/a/manifests/latest", nameInvalid, bad),
		refused("absolute form with fragment after the tag", "PUT", "http://evil/v2/a/manifests/latest#/../../x", nameInvalid, bad),
		refused("absolute form with user information", "GET", "http://user:pw@evil/v2/", nameInvalid, bad),
		refused("absolute form with backslash authority", "GET", "http://evil\\@good/v2/", nameInvalid, bad),
		refused("absolute form without a path", "GET", "http://evil", nameInvalid, bad),
		refused("absolute form glued to v2", "GET", "http://evil/v2x/a/manifests/latest", unsupported, notFound),
		refused("file scheme", "GET", "file:///v2/", nameInvalid, bad),
		refused("javascript scheme", "GET", "javascript:/v2/", nameInvalid, bad),
		refused("scheme without authority", "GET", "http:/v2/", nameInvalid, bad),
		refused("scheme-relative target", "GET", "//evil/v2/a/manifests/latest", nameInvalid, bad),
		refused("asterisk target", "OPTIONS", "*", nameInvalid, bad),
		refused("authority target", "CONNECT", "evil:443", nameInvalid, bad),

		// Fragments.
		refused("fragment after tag", "PUT", "/v2/a/manifests/latest#x", nameInvalid, bad),
		refused("fragment after ping", "GET", "/v2/#", nameInvalid, bad),
		refused("fragment in query", "GET", "/v2/_catalog?n=1#x", unsupported, bad),
		refused("fragment in upload state", "PATCH", "/v2/a/blobs/uploads/"+session+"?_state=s#../../x", unsupported, bad),

		// Query smuggling.
		refused("tag parameter climbing", "PUT", put+"?tag=../x", tagInvalid, bad),
		refused("tag parameter with slash", "PUT", put+"?tag=x/../y", tagInvalid, bad),
		refused("tag parameter encoded dots", "PUT", put+"?tag=%2e%2e", tagInvalid, bad),
		refused("tag parameter empty", "PUT", put+"?tag=", tagInvalid, bad),
		refused("tag parameter dash", "PUT", put+"?tag=-x", tagInvalid, bad),
		refused("tag parameter with colon", "PUT", put+"?tag=a:b", tagInvalid, bad),
		refused("tag parameter too long", "PUT", put+"?tag="+strings.Repeat("t", 129), tagInvalid, bad),
		refused("one bad tag among good ones", "PUT", put+"?tag=v1&tag=v%0A2", tagInvalid, bad),
		refused("from climbing", "POST", "/v2/a/blobs/uploads/?mount="+d+"&from=../../x", nameInvalid, bad),
		refused("from with encoded dots", "POST", "/v2/a/blobs/uploads/?mount="+d+"&from=a%2F..%2Fb", nameInvalid, bad),
		refused("mount that is a tag", "POST", "/v2/a/blobs/uploads/?mount=latest&from=b", digestInvalid, bad),
		refused("mount that is a path", "POST", "/v2/a/blobs/uploads/?mount=../../etc/passwd&from=b", digestInvalid, bad),
		refused("mount given twice", "POST", "/v2/a/blobs/uploads/?mount="+d+"&mount="+d256b.String()+"&from=b", unsupported, bad),
		refused("from given twice", "POST", "/v2/a/blobs/uploads/?mount="+d+"&from=b&from=c", unsupported, bad),
		refused("n given twice", "GET", "/v2/a/tags/list?n=1&n=1000", unsupported, bad),
		refused("n given twice on catalog", "GET", "/v2/_catalog?n=10&n=20", unsupported, bad),
		refused("last given twice", "GET", "/v2/a/tags/list?last=a&last=b", unsupported, bad),
		refused("n negative", "GET", "/v2/_catalog?n=-1", pageInvalid, bad),
		refused("n in exponent form", "GET", "/v2/_catalog?n=1e3", pageInvalid, bad),
		refused("n in hex", "GET", "/v2/_catalog?n=0x10", pageInvalid, bad),
		refused("n with a sign", "GET", "/v2/_catalog?n=%2B10", pageInvalid, bad),
		refused("n overflowing", "GET", "/v2/_catalog?n=99999999999999999999", pageInvalid, bad),
		refused("catalog last climbing", "GET", "/v2/_catalog?last=../x", unsupported, bad),
		refused("tag list last with slash", "GET", "/v2/a/tags/list?last=a/b", unsupported, bad),
		refused("upload digest given twice", "PUT", "/v2/a/blobs/uploads/"+session+"?digest="+d+"&digest="+d256b.String(), digestInvalid, bad),
		refused("upload digest that is a path", "PUT", "/v2/a/blobs/uploads/"+session+"?digest=../x", digestInvalid, bad),
		refused("upload parameter name with a slash", "PATCH", "/v2/a/blobs/uploads/"+session+"?a%2Fb=1", uploadInvalid, bad),
		refused("artifactType climbing", "GET", "/v2/a/referrers/"+d+"?artifactType=../../x", unsupported, bad),
		means("tag parameter on a GET is dropped", "GET", "/v2/a/manifests/latest?tag=../x",
			KindManifest, "a", "latest", "", "/v2/a/manifests/latest"),
		means("tag parameter on a DELETE is dropped", "DELETE", "/v2/a/manifests/latest?tag=other",
			KindManifest, "a", "latest", "", "/v2/a/manifests/latest"),
		means("unknown parameters on a blob are dropped", "GET", "/v2/a/blobs/"+d+"?ns=../../x&path=/etc",
			KindBlob, "a", "", d256, "/v2/a/blobs/"+d),

		// Methods.
		refused("lower-case method", "put", "/v2/a/manifests/latest", unsupported, notAllowed),
		refused("TRACE", "TRACE", "/v2/a/manifests/latest", unsupported, notAllowed),
		refused("method override verb", "MOVE", "/v2/a/manifests/latest", unsupported, notAllowed),
		refused("PUT to a blob", "PUT", "/v2/a/blobs/"+d, unsupported, notAllowed),
		refused("DELETE of the tag list", "DELETE", "/v2/a/tags/list", unsupported, notAllowed),
	}
}

// TestAttackCatalogue ensures that every spelling in the catalogue of path
// attempts is either refused with the spec's code or parsed to exactly the
// safe route it means, forwarded on a path that means the same.
func TestAttackCatalogue(t *testing.T) {
	t.Parallel()
	catalogue := attackCatalogue()
	if len(catalogue) < 60 {
		t.Fatalf("the catalogue has %d attempts, want at least 60", len(catalogue))
	}
	seen := map[string]bool{}
	for _, a := range catalogue {
		if seen[a.why] {
			t.Fatalf("two attempts are called %q", a.why)
		}
		seen[a.why] = true
		t.Run(a.why, func(t *testing.T) {
			t.Parallel()
			rt, err := ParseRequest(a.method, a.uri)
			if a.status != 0 {
				if err == nil {
					t.Fatalf("%s %q was accepted as %+v (path %q), want %s %d", a.method, a.uri, rt, rt.Path(), a.code, a.status)
				}
				code, status := refusal(t, err)
				if code != a.code || status != a.status {
					t.Fatalf("%s %q = %s %d (%v), want %s %d", a.method, a.uri, code, status, err, a.code, a.status)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s %q = %v, want it accepted", a.method, a.uri, err)
			}
			if rt.Kind != a.kind || rt.Name != a.name || rt.Tag != a.tag || rt.Digest != a.digest {
				t.Fatalf("%s %q parsed to kind %s name %q tag %q digest %q, want %s %q %q %q",
					a.method, a.uri, rt.Kind, rt.Name, rt.Tag, rt.Digest, a.kind, a.name, a.tag, a.digest)
			}
			if got := rt.Path(); got != a.path {
				t.Fatalf("%s %q is forwarded on %q, want %q", a.method, a.uri, got, a.path)
			}
			checkRouteGrammar(t, rt)
			checkFixedPoint(t, rt)
			checkSamePath(t, a.uri, rt)
		})
	}
}
