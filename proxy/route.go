package proxy

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"
)

// Kind is the distribution API endpoint a request addresses.
type Kind uint8

// The endpoints of the distribution API.
const (
	KindPing Kind = iota + 1
	KindCatalog
	KindTags
	KindManifest
	KindBlob
	KindUploadStart
	KindUpload
	KindReferrers
)

var kindNames = map[Kind]string{
	KindPing: "ping", KindCatalog: "catalog", KindTags: "tags", KindManifest: "manifest",
	KindBlob: "blob", KindUploadStart: "upload-start", KindUpload: "upload", KindReferrers: "referrers",
}

func (k Kind) String() string { return kindNames[k] }

// Route is a request parsed against the distribution spec's grammar. Only
// its parts, never the raw request path, are used to build the upstream URL.
type Route struct {
	Kind   Kind
	Method string
	// Name is the repository name.
	Name string
	// Tag is set when the reference is a tag.
	Tag string
	// Digest is set when the reference is a digest (manifests, blobs,
	// referrers).
	Digest digest.Digest
	// Session is the upload session identifier.
	Session string
	// Tags lists every tag a manifest PUT writes: the reference tag and
	// each ?tag= parameter, sorted and without duplicates.
	Tags []string
	// Query holds only the parameters the endpoint allows, validated.
	Query url.Values
}

// Path rebuilds the request path from the parsed parts.
func (rt Route) Path() string {
	switch rt.Kind {
	case KindPing:
		return "/v2/"
	case KindCatalog:
		return "/v2/_catalog"
	case KindTags:
		return "/v2/" + rt.Name + "/tags/list"
	case KindManifest:
		return "/v2/" + rt.Name + "/manifests/" + rt.Reference()
	case KindBlob:
		return "/v2/" + rt.Name + "/blobs/" + rt.Digest.String()
	case KindUploadStart:
		return "/v2/" + rt.Name + "/blobs/uploads/"
	case KindUpload:
		return "/v2/" + rt.Name + "/blobs/uploads/" + rt.Session
	case KindReferrers:
		return "/v2/" + rt.Name + "/referrers/" + rt.Digest.String()
	}
	return ""
}

// Reference is the manifest reference: the tag or the digest.
func (rt Route) Reference() string {
	if rt.Tag != "" {
		return rt.Tag
	}
	return rt.Digest.String()
}

// URL returns the rebuilt path with the allowed query.
func (rt Route) URL() *url.URL {
	return &url.URL{Path: rt.Path(), RawQuery: rt.Query.Encode()}
}

// The spec's grammar (distribution-spec, "Pulling manifests").
var (
	nameComponent = `[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*`
	nameRE        = regexp.MustCompile(`^` + nameComponent + `(?:/` + nameComponent + `)*$`)
	tagRE         = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	sessionRE     = regexp.MustCompile(`^[A-Za-z0-9._~=-]{1,512}$`)
	queryKeyRE    = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	mediaTypeRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$`)
)

// MaxTagsPerPush is how many ?tag= parameters one manifest push by digest
// may carry; more are refused with 414, as the spec allows. The spec asks
// registries to accept at least 10.
const MaxTagsPerPush = 64

// maxNameLength is the longest repository name accepted, as in Distribution.
const maxNameLength = 255

// requestError is a request that does not parse; it carries the spec's code.
type requestError struct {
	code   errcode.ErrorCode
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(code errcode.ErrorCode, format string, args ...any) error {
	return &requestError{code: code, status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

var (
	errNotFound = &requestError{code: errcode.ErrorCodeUnsupported, status: http.StatusNotFound, msg: "not a distribution API endpoint"}
)

func methodNotAllowed(method string, k Kind) error {
	return &requestError{code: errcode.ErrorCodeUnsupported, status: http.StatusMethodNotAllowed,
		msg: fmt.Sprintf("method %s is not supported on the %s endpoint", method, k)}
}

// ParseRequest parses method and request URI (path and raw query exactly as
// received) into a Route. What does not match the grammar is an error that
// names the spec's code; nothing about it is guessed or cleaned up.
func ParseRequest(method, requestURI string) (Route, error) {
	rawPath, rawQuery, _ := strings.Cut(requestURI, "?")
	rawPath, err := originPath(rawPath)
	if err != nil {
		return Route{}, err
	}
	if err := checkPath(rawPath); err != nil {
		return Route{}, err
	}
	if i := strings.IndexFunc(rawQuery, func(c rune) bool { return c <= 0x20 || c >= 0x7f || c == '#' }); i >= 0 {
		return Route{}, badRequest(errcode.ErrorCodeUnsupported, "query string contains a character that is not allowed (%q)", rawQuery[i])
	}
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return Route{}, badRequest(errcode.ErrorCodeUnsupported, "query string does not parse: %v", err)
	}
	rt := Route{Method: method}
	rest, ok := strings.CutPrefix(rawPath, "/v2")
	if !ok || (rest != "" && rest[0] != '/') {
		return Route{}, errNotFound
	}
	switch {
	case rest == "" || rest == "/":
		rt.Kind = KindPing
	case rest == "/_catalog":
		rt.Kind = KindCatalog
	default:
		if err := parseRepoPath(&rt, strings.TrimPrefix(rest, "/")); err != nil {
			return Route{}, err
		}
	}
	if !slices.Contains(methods[rt.Kind], method) {
		return Route{}, methodNotAllowed(method, rt.Kind)
	}
	if rt.Query, err = allowedQuery(&rt, query); err != nil {
		return Route{}, err
	}
	return rt, nil
}

var methods = map[Kind][]string{
	KindPing:        {http.MethodGet, http.MethodHead},
	KindCatalog:     {http.MethodGet},
	KindTags:        {http.MethodGet},
	KindManifest:    {http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete},
	KindBlob:        {http.MethodGet, http.MethodHead, http.MethodDelete},
	KindUploadStart: {http.MethodPost},
	KindUpload:      {http.MethodGet, http.MethodPatch, http.MethodPut, http.MethodDelete},
	KindReferrers:   {http.MethodGet},
}

// authorityRE is the host[:port] of an absolute-form request target: a
// registered name or a bracketed IP literal, and no user information.
var authorityRE = regexp.MustCompile(`^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$`)

// originPath returns the path of an absolute-form request target
// ("http://host/v2/..."), which RFC 9112 requires servers to accept, as the
// exact text that follows the authority; any other target is returned as it
// is. Nothing is decoded or normalised, so checkPath sees what was sent.
func originPath(target string) (string, error) {
	if strings.HasPrefix(target, "/") {
		return target, nil
	}
	scheme, rest, ok := strings.Cut(target, "://")
	if !ok {
		return "", badRequest(errcode.ErrorCodeNameInvalid, "request target must be an absolute path")
	}
	if s := strings.ToLower(scheme); s != "http" && s != "https" {
		return "", badRequest(errcode.ErrorCodeNameInvalid, "request target has scheme %q; only http and https are allowed", scheme)
	}
	i := strings.IndexByte(rest, '/')
	if i < 0 || !authorityRE.MatchString(rest[:i]) {
		return "", badRequest(errcode.ErrorCodeNameInvalid, "absolute-form request target needs a host and a path")
	}
	return rest[i:], nil
}

// checkPath refuses spellings that could mean two things to two parsers:
// percent-encoding, dot segments, empty segments, backslashes, parameters,
// fragments and control or non-ASCII bytes.
func checkPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return badRequest(errcode.ErrorCodeNameInvalid, "request path must be absolute")
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c <= 0x20 || c >= 0x7f || c == '%' || c == '\\' || c == ';' || c == '#' {
			return badRequest(errcode.ErrorCodeNameInvalid, "request path contains a character that is not allowed (%q)", c)
		}
	}
	if strings.Contains(p, "//") {
		return badRequest(errcode.ErrorCodeNameInvalid, "request path contains an empty segment")
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return badRequest(errcode.ErrorCodeNameInvalid, "request path contains a dot segment")
		}
	}
	return nil
}

// parseRepoPath splits "<name>/<endpoint>" at the last endpoint keyword, as
// Distribution's router does, and validates each part.
func parseRepoPath(rt *Route, p string) error {
	var name, ref string
	switch {
	case strings.HasSuffix(p, "/tags/list"):
		rt.Kind, name = KindTags, strings.TrimSuffix(p, "/tags/list")
	case strings.HasSuffix(p, "/blobs/uploads/") || strings.HasSuffix(p, "/blobs/uploads"):
		rt.Kind, name = KindUploadStart, p[:strings.LastIndex(p, "/blobs/uploads")]
	default:
		i := strings.LastIndexByte(p, '/')
		if i < 0 {
			return errNotFound
		}
		ref = p[i+1:]
		head := p[:i]
		j := strings.LastIndexByte(head, '/')
		if j < 0 {
			return errNotFound
		}
		name = head[:j]
		switch head[j+1:] {
		case "manifests":
			rt.Kind = KindManifest
		case "blobs":
			rt.Kind = KindBlob
		case "referrers":
			rt.Kind = KindReferrers
		case "uploads":
			if !strings.HasSuffix(name, "/blobs") {
				return errNotFound
			}
			rt.Kind, name = KindUpload, strings.TrimSuffix(name, "/blobs")
		default:
			return errNotFound
		}
	}
	if err := checkName(name); err != nil {
		return err
	}
	rt.Name = name
	switch rt.Kind {
	case KindManifest:
		if strings.Contains(ref, ":") {
			d, err := parseDigest(ref)
			if err != nil {
				return err
			}
			rt.Digest = d
		} else {
			if !tagRE.MatchString(ref) {
				return badRequest(errcode.ErrorCodeTagInvalid, "invalid tag %q: tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", ref)
			}
			rt.Tag = ref
		}
	case KindBlob, KindReferrers:
		d, err := parseDigest(ref)
		if err != nil {
			return err
		}
		rt.Digest = d
	case KindUpload:
		if !sessionRE.MatchString(ref) {
			return badRequest(errcode.ErrorCodeBlobUploadInvalid, "invalid upload session %q", ref)
		}
		rt.Session = ref
	}
	return nil
}

func checkName(name string) error {
	if len(name) > maxNameLength {
		return badRequest(errcode.ErrorCodeNameInvalid, "repository name is %d characters; at most %d are allowed", len(name), maxNameLength)
	}
	if !nameRE.MatchString(name) {
		return badRequest(errcode.ErrorCodeNameInvalid, "invalid repository name %q: names are lower-case path components [a-z0-9]+ separated by '.', '_', '__', '-' or '/'", name)
	}
	return nil
}

func parseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", badRequest(errcode.ErrorCodeDigestInvalid, "invalid digest %q: %v", s, err)
	}
	return d, nil
}

// allowedQuery keeps the parameters the endpoint defines, validated, and
// drops the rest. Upload sessions keep opaque state parameters, because the
// spec leaves their Location opaque.
func allowedQuery(rt *Route, q url.Values) (url.Values, error) {
	if err := checkKeyCase(rt, q); err != nil {
		return nil, err
	}
	out := url.Values{}
	single := func(k string) (string, bool, error) {
		vs, ok := q[k]
		if !ok {
			return "", false, nil
		}
		if len(vs) != 1 {
			return "", false, badRequest(errcode.ErrorCodeUnsupported, "query parameter %q given %d times", k, len(vs))
		}
		return vs[0], true, nil
	}
	pagination := func(lastOK func(string) bool) error {
		if n, ok, err := single("n"); err != nil {
			return err
		} else if ok {
			if _, err := strconv.Atoi(n); err != nil || strings.Trim(n, "0123456789") != "" {
				return badRequest(errcode.ErrorCodePaginationNumberInvalid, "n must be a non-negative integer, got %q", n)
			}
			out.Set("n", n)
		}
		if last, ok, err := single("last"); err != nil {
			return err
		} else if ok && last != "" {
			if !lastOK(last) {
				return badRequest(errcode.ErrorCodeUnsupported, "invalid last %q", last)
			}
			out.Set("last", last)
		}
		return nil
	}
	switch rt.Kind {
	case KindCatalog:
		if err := pagination(func(s string) bool { return checkName(s) == nil }); err != nil {
			return nil, err
		}
	case KindTags:
		if err := pagination(tagRE.MatchString); err != nil {
			return nil, err
		}
	case KindManifest:
		if rt.Method == http.MethodPut {
			params := q["tag"]
			if rt.Tag != "" {
				if len(params) > 0 {
					// The spec defines ?tag= only for a push by digest;
					// what a registry does with both differs (Distribution
					// ignores the parameters), so neither is guessed.
					return nil, badRequest(errcode.ErrorCodeTagInvalid,
						"tag parameters are allowed only when pushing by digest (PUT /v2/<name>/manifests/<digest>?tag=...); this request names the tag %q in its path", rt.Tag)
				}
				rt.Tags = []string{rt.Tag}
				break
			}
			if len(params) > MaxTagsPerPush {
				return nil, &requestError{code: errcode.ErrorCodeTagInvalid, status: http.StatusRequestURITooLong,
					msg: fmt.Sprintf("%d tag parameters; at most %d are accepted in one push", len(params), MaxTagsPerPush)}
			}
			for _, t := range params {
				if !tagRE.MatchString(t) {
					return nil, badRequest(errcode.ErrorCodeTagInvalid, "invalid tag parameter %q", t)
				}
				out.Add("tag", t)
			}
			tags := slices.Clone(params)
			slices.Sort(tags)
			rt.Tags = slices.Compact(tags)
		}
	case KindUploadStart:
		for _, k := range []string{"digest", "mount"} {
			if v, ok, err := single(k); err != nil {
				return nil, err
			} else if ok {
				if _, err := parseDigest(v); err != nil {
					return nil, err
				}
				out.Set(k, v)
			}
		}
		if v, ok, err := single("from"); err != nil {
			return nil, err
		} else if ok {
			if err := checkName(v); err != nil {
				return nil, err
			}
			out.Set("from", v)
		}
	case KindUpload:
		for k, vs := range q {
			if !queryKeyRE.MatchString(k) {
				return nil, badRequest(errcode.ErrorCodeBlobUploadInvalid, "invalid query parameter name %q", k)
			}
			if k == "digest" {
				if len(vs) != 1 {
					return nil, badRequest(errcode.ErrorCodeDigestInvalid, "digest given %d times", len(vs))
				}
				if _, err := parseDigest(vs[0]); err != nil {
					return nil, err
				}
			}
			out[k] = vs
		}
	case KindReferrers:
		if v, ok, err := single("artifactType"); err != nil {
			return nil, err
		} else if ok {
			if !mediaTypeRE.MatchString(v) {
				return nil, badRequest(errcode.ErrorCodeUnsupported, "invalid artifactType %q", v)
			}
			out.Set("artifactType", v)
		}
	}
	return out, nil
}

// definedKeys are the query parameters each endpoint defines (for
// manifests, on PUT only).
var definedKeys = map[Kind][]string{
	KindCatalog:     {"n", "last"},
	KindTags:        {"n", "last"},
	KindManifest:    {"tag"},
	KindUploadStart: {"digest", "mount", "from"},
	KindUpload:      {"digest"},
	KindReferrers:   {"artifactType"},
}

// checkKeyCase refuses a parameter spelled like one the endpoint defines
// but in other letter case (TAG=, Digest=). Parameter names are
// case-sensitive, so taglock and the registry would both ignore it, while
// the client, or a proxy in front that folds case, believes it applied.
func checkKeyCase(rt *Route, q url.Values) error {
	if rt.Kind == KindManifest && rt.Method != http.MethodPut {
		return nil // only a PUT takes ?tag=; elsewhere it is dropped
	}
	for k := range q {
		for _, want := range definedKeys[rt.Kind] {
			if k != want && strings.EqualFold(k, want) {
				return badRequest(errcode.ErrorCodeUnsupported, "query parameter %q is not %q: parameter names are case-sensitive", k, want)
			}
		}
	}
	return nil
}
