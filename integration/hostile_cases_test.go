package integration

import (
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// The answers hostile requests get.
var (
	denied          = answer{403, "DENIED", "is immutable"}
	nameInvalid     = answer{400, "NAME_INVALID", ""}
	tagInvalid      = answer{400, "TAG_INVALID", ""}
	digestInvalid   = answer{400, "DIGEST_INVALID", ""}
	manifestInvalid = answer{400, "MANIFEST_INVALID", ""}
	unreadable      = answer{400, "MANIFEST_INVALID", "manifest body could not be read"}
	queryRefused    = answer{400, "UNSUPPORTED", ""}
	caseRefused     = answer{400, "UNSUPPORTED", "parameter names are case-sensitive"}
	methodRefused   = answer{405, "UNSUPPORTED", ""}
	tooLarge        = answer{413, "SIZE_INVALID", ""}
	// net/http answers these itself, in plain text, and hangs up.
	httpBadRequest = answer{400, "", "400 Bad Request"}
	httpBadTE      = answer{501, "", "Unsupported transfer encoding"}
	httpTooLarge   = answer{431, "", "431 Request Header Fields Too Large"}
)

// req is one HTTP/1.1 request to taglock: the request line (without the
// version), Host, the headers given, Connection: close and the body.
func req(line, body string, headers ...string) string {
	return keepAlive(line, body, append(headers, "Connection: close")...)
}

// keepAlive is req without Connection: close, for the first of two
// requests on one connection.
func keepAlive(line, body string, headers ...string) string {
	return line + " HTTP/1.1\r\nHost: registry.test\r\n" + strings.Join(append(headers, ""), "\r\n") + "\r\n" + body
}

// put is a manifest PUT of m to target with its media type and length.
func put(target string, m Manifest, headers ...string) string {
	return req("PUT "+target, string(m.Raw), append([]string{"Content-Type: " + m.MediaType, fmt.Sprintf("Content-Length: %d", len(m.Raw))}, headers...)...)
}

// chunked encodes body in chunks of size bytes, each line ending in eol,
// with ext after every chunk size, and the trailer lines given.
func chunked(body string, size int, eol, ext string, trailer ...string) string {
	var b strings.Builder
	for len(body) > 0 {
		n := min(size, len(body))
		fmt.Fprintf(&b, "%x%s%s%s%s", n, ext, eol, body[:n], eol)
		body = body[n:]
	}
	b.WriteString("0" + eol)
	for _, t := range trailer {
		b.WriteString(t + eol)
	}
	return b.String() + eol
}

// queryOf repeats key=value n times, numbering the values.
func queryOf(key, value string, n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf("%s=%s%d", key, value, i)
	}
	return strings.Join(parts, "&")
}

const (
	deleteV1      = "DELETE /v2/team/app/manifests/v1"
	manifests     = "/v2/team/app/manifests/"
	uploads       = "/v2/team/app/blobs/uploads/"
	uploadSession = "0c6b3f4e-8d57-4a47-9d1b-2c2f0b1e9a77"
)

// hostileCases is the catalogue. Each request, if it were honoured as
// something other than what taglock's parser sees, would move or delete the
// immutable tag team/app:v1 or touch the registry.
func hostileCases() []hostileCase {
	fixed := func(s string) func(hostileFixture) string { return func(hostileFixture) string { return s } }
	moveV1 := func(f hostileFixture) string { return put(manifests+"v1", f.other) }
	smuggled := func(f hostileFixture) string { return req(deleteV1, "") }
	oci := func(f hostileFixture) string { return "Content-Type: " + f.other.MediaType }
	return []hostileCase{
		// Request smuggling: the body's end as Content-Length and
		// Transfer-Encoding disagree on it.
		{name: "Content-Length and chunked, a DELETE smuggled after the empty body",
			raw: func(f hostileFixture) string {
				body := "0\r\n\r\n" + smuggled(f)
				return keepAlive("PUT "+manifests+"v2", body, oci(f), fmt.Sprintf("Content-Length: %d", len(body)), "Transfer-Encoding: chunked")
			}, want: []answer{manifestInvalid, denied}},
		{name: "chunked before Content-Length, a move of v1 smuggled",
			raw: func(f hostileFixture) string {
				body := "0\r\n\r\n" + moveV1(f)
				return keepAlive("PUT "+manifests+"v2", body, oci(f), "Transfer-Encoding: chunked", fmt.Sprintf("Content-Length: %d", len(body)))
			}, want: []answer{manifestInvalid, denied}},
		{name: "Content-Length and Chunked in other case",
			raw: func(f hostileFixture) string {
				body := "0\r\n\r\n" + smuggled(f)
				return keepAlive("PUT "+manifests+"v2", body, oci(f), fmt.Sprintf("Content-Length: %d", len(body)), "Transfer-Encoding: Chunked")
			}, want: []answer{manifestInvalid, denied}},
		{name: "bytes after the Content-Length are a request of their own",
			raw: func(f hostileFixture) string {
				return keepAlive("PUT "+manifests+"v1", string(f.other.Raw), oci(f), fmt.Sprintf("Content-Length: %d", len(f.other.Raw))) + smuggled(f)
			}, want: []answer{denied, denied}},
		{name: "two different Content-Lengths",
			raw: func(f hostileFixture) string {
				return req("PUT "+manifests+"v1", string(f.other.Raw), oci(f), fmt.Sprintf("Content-Length: %d", len(f.other.Raw)), "Content-Length: 2")
			}, want: []answer{httpBadRequest}},
		{name: "two equal Content-Lengths",
			raw: func(f hostileFixture) string {
				n := fmt.Sprintf("Content-Length: %d", len(f.other.Raw))
				return req("PUT "+manifests+"v1", string(f.other.Raw), oci(f), n, n)
			}, want: []answer{denied}},
		{name: "Content-Length as a list",
			raw: func(f hostileFixture) string {
				return req("PUT "+manifests+"v1", string(f.other.Raw), oci(f), fmt.Sprintf("Content-Length: %d, %[1]d", len(f.other.Raw)))
			}, want: []answer{httpBadRequest}},
		{name: "Content-Length with a plus sign", raw: fixed(req("PUT "+manifests+"v1", "{}", "Content-Length: +2")), want: []answer{httpBadRequest}},
		{name: "negative Content-Length", raw: fixed(req("PUT "+manifests+"v1", "{}", "Content-Length: -1")), want: []answer{httpBadRequest}},
		{name: "hexadecimal Content-Length", raw: fixed(req("PUT "+manifests+"v1", "{}", "Content-Length: 0x2")), want: []answer{httpBadRequest}},
		{name: "Content-Length beyond 64 bits", raw: fixed(req("PUT "+manifests+"v1", "{}", "Content-Length: 99999999999999999999")), want: []answer{httpBadRequest}},
		{name: "Content-Length of a terabyte", raw: fixed(req("PUT "+manifests+"v1", "{}", "Content-Length: 1099511627776")), want: []answer{tooLarge}},
		{name: "Transfer-Encoding identity", raw: fixed(req("PUT "+manifests+"v1", "{}", "Transfer-Encoding: identity")), want: []answer{httpBadTE}},
		{name: "Transfer-Encoding gzip then chunked", raw: fixed(req("PUT "+manifests+"v1", "0\r\n\r\n", "Transfer-Encoding: gzip, chunked")), want: []answer{httpBadTE}},
		{name: "two Transfer-Encoding headers", raw: fixed(req("PUT "+manifests+"v1", "0\r\n\r\n", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked")), want: []answer{httpBadTE}},
		{name: "Transfer-Encoding xchunked", raw: fixed(req("PUT "+manifests+"v1", "0\r\n\r\n", "Transfer-Encoding: xchunked")), want: []answer{httpBadTE}},
		{name: "space before the colon of Transfer-Encoding", raw: fixed(req("PUT "+manifests+"v1", "0\r\n\r\n", "Transfer-Encoding : chunked", "Content-Length: 5")),
			want: []answer{{400, "", "invalid header name"}}},
		{name: "chunk size that is not hexadecimal", raw: fixed(req("PUT "+manifests+"v1", "zz\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked")), want: []answer{unreadable}},
		{name: "chunk lines ending in a bare LF",
			raw: func(f hostileFixture) string {
				return req("PUT "+manifests+"v1", chunked(string(f.other.Raw), 64, "\n", ""), oci(f), "Transfer-Encoding: chunked")
			}, want: []answer{unreadable}},
		{name: "chunk size overflowing 64 bits", raw: fixed(req("PUT "+manifests+"v1", "10000000000000000\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked")), want: []answer{unreadable}},
		{name: "chunk extensions and a trailer naming v1's digest",
			raw: func(f hostileFixture) string {
				return req("PUT "+manifests+"v1", chunked(string(f.other.Raw), 7, "\r\n", ";digest=x", "Docker-Content-Digest: "+f.v1.Digest.String()),
					oci(f), "Transfer-Encoding: chunked", "Trailer: Docker-Content-Digest")
			}, want: []answer{denied}},
		{name: "Expect 100-continue before a move",
			raw: func(f hostileFixture) string { return put(manifests+"v1", f.other, "Expect: 100-continue") }, want: []answer{denied}},
		{name: "an expectation net/http does not know",
			raw: func(f hostileFixture) string { return put(manifests+"v1", f.other, "Expect: 200-ok") }, want: []answer{{417, "", ""}}},

		// Absolute-form targets and Host games.
		{name: "absolute-form DELETE naming a foreign host", raw: fixed(req("DELETE http://evil.example/v2/team/app/manifests/v1", "")), want: []answer{denied}},
		{name: "absolute-form move naming the upstream",
			raw: func(f hostileFixture) string { return put("http://"+f.upstream+manifests+"v1", f.other) }, want: []answer{denied}},
		{name: "absolute-form with user information", raw: fixed(req("DELETE http://admin:admin@registry.test/v2/team/app/manifests/v1", "")), want: []answer{nameInvalid}},
		{name: "absolute-form with a dot-dot", raw: fixed(req("DELETE http://registry.test/v2/team/x/../app/manifests/v1", "")), want: []answer{nameInvalid}},
		{name: "absolute-form with an ftp scheme", raw: fixed(req("DELETE ftp://registry.test/v2/team/app/manifests/v1", "")), want: []answer{nameInvalid}},
		{name: "absolute-form with the path in a fragment", raw: fixed(req("DELETE http://registry.test#/v2/team/app/manifests/v1", "")), want: []answer{httpBadRequest}},
		{name: "no Host header", raw: fixed(deleteV1 + " HTTP/1.1\r\nConnection: close\r\n\r\n"), want: []answer{{400, "", "missing required Host header"}}},
		{name: "two Host headers", raw: fixed(req(deleteV1, "", "Host: registry.test")), want: []answer{httpBadRequest}},
		{name: "Host with a path", raw: fixed(deleteV1 + " HTTP/1.1\r\nHost: registry.test/v2/team/app/manifests/v2\r\nConnection: close\r\n\r\n"),
			want: []answer{{400, "", "malformed Host header"}}},
		{name: "path override headers",
			raw: fixed(req(deleteV1, "", "X-Original-URL: /v2/team/app/manifests/scratch", "X-Rewrite-URL: /v2/team/app/manifests/scratch",
				"X-Forwarded-Host: other.example", "X-Forwarded-Prefix: /v2/team/app/manifests/scratch")),
			want: []answer{denied}},
		{name: "CONNECT to the upstream",
			raw: func(f hostileFixture) string {
				return "CONNECT " + f.upstream + " HTTP/1.1\r\nHost: " + f.upstream + "\r\nConnection: close\r\n\r\n"
			},
			want: []answer{{404, "", "404 page not found"}}},
		{name: "OPTIONS asterisk", raw: fixed(req("OPTIONS *", "")), want: []answer{{200, "", ""}}},

		// Paths: parameters, backslashes, double encoding, odd bytes.
		{name: "matrix parameter after the tag", raw: fixed(req(deleteV1+";v2", "")), want: []answer{nameInvalid}},
		{name: "matrix parameter in the name", raw: moveOn("/v2/team;x=1/app/manifests/v1"), want: []answer{nameInvalid}},
		{name: "backslash in the name", raw: fixed(req(`DELETE /v2/team\app/manifests/v1`, "")), want: []answer{nameInvalid}},
		{name: "backslash before the tag", raw: fixed(req(`DELETE /v2/team/app/manifests\v1`, "")), want: []answer{nameInvalid}},
		{name: "double-encoded dot-dot", raw: fixed(req("DELETE /v2/team/app/manifests/%252e%252e/v1", "")), want: []answer{nameInvalid}},
		{name: "double-encoded slash", raw: moveOn("/v2/team%252fapp/manifests/v1"), want: []answer{nameInvalid}},
		{name: "percent-u escape", raw: fixed(req("DELETE /v2/team/app/manifests/%u0076%u0031", "")), want: []answer{httpBadRequest}},
		{name: "overlong UTF-8 dots, encoded", raw: fixed(req("DELETE /v2/team/app/manifests/%c0%ae%c0%ae/v1", "")), want: []answer{nameInvalid}},
		{name: "overlong UTF-8 dots, raw", raw: fixed(req("DELETE /v2/team/app/manifests/\xc0\xae\xc0\xae/v1", "")), want: []answer{nameInvalid}},
		{name: "invalid UTF-8 in the name", raw: moveOn("/v2/team/app\xff/manifests/v1"), want: []answer{nameInvalid}},
		{name: "control byte in the tag", raw: fixed(req(deleteV1+"\x01", "")), want: []answer{httpBadRequest}},
		{name: "NUL byte in the tag", raw: fixed(req(deleteV1+"\x00", "")), want: []answer{httpBadRequest}},
		{name: "DEL byte in the tag", raw: fixed(req(deleteV1+"\x7f", "")), want: []answer{httpBadRequest}},
		{name: "tab in the request target", raw: fixed(req("DELETE /v2/team/app/manifests/\tv1", "")), want: []answer{httpBadRequest}},
		{name: "fragment hiding a dot-dot", raw: fixed(req("DELETE /v2/team/app/manifests/v2#/../v1", "")), want: []answer{nameInvalid}},
		{name: "invalid UTF-8 in the query",
			raw: func(f hostileFixture) string { return put(manifests+f.other.Digest.String()+"?tag=v\xff1", f.other) }, want: []answer{queryRefused}},

		// Query keys that repeat or change case.
		// Distribution ignores ?tag= on a tag path; the spec allows it
		// only with a digest.
		{name: "?tag= on a push by tag", raw: moveOn(manifests + "v2?tag=v3"),
			want: []answer{{400, "TAG_INVALID", "allowed only when pushing by digest"}}},
		{name: "?tag= naming v1 on a push of v2", raw: moveOn(manifests + "v2?tag=v1"), want: []answer{tagInvalid}},
		{name: "?tag= naming the path's own tag",
			raw: func(f hostileFixture) string { return put(manifests+"v1?tag=v1", f.v1) }, want: []answer{tagInvalid}},
		{name: "TAG= on a push by digest", raw: byDigest("?TAG=v1"), want: []answer{caseRefused}},
		{name: "Tag= on a push by digest", raw: byDigest("?Tag=v1"), want: []answer{caseRefused}},
		{name: "tag= and TAG= together", raw: byDigest("?tag=v2&TAG=v1"), want: []answer{caseRefused}},
		{name: "65 tags in one push", raw: byDigest("?" + queryOf("tag", "t", 64) + "&tag=v1"), want: []answer{{414, "TAG_INVALID", "at most 64"}}},
		{name: "semicolons between tags", raw: byDigest("?tag=v2;tag=v1"), want: []answer{queryRefused}},
		{name: "10001 query parameters", raw: byDigest("?" + queryOf("x", "", 10000) + "&tag=v1"), want: []answer{queryRefused}},
		{name: "n given twice", raw: fixed(req("GET /v2/team/app/tags/list?n=1&n=1000", "")), want: []answer{queryRefused}},
		{name: "N= on the tag list", raw: fixed(req("GET /v2/team/app/tags/list?N=1", "")), want: []answer{caseRefused}},
		{name: "Last= on the catalog", raw: fixed(req("GET /v2/_catalog?n=1&Last=team", "")), want: []answer{caseRefused}},
		{name: "digest given twice to an upload",
			raw: func(f hostileFixture) string {
				return req("PUT "+uploads+uploadSession+"?digest="+f.v1.Digest.String()+"&digest="+f.other.Digest.String(), "", "Content-Length: 0")
			}, want: []answer{digestInvalid}},
		{name: "Digest= on an upload",
			raw: func(f hostileFixture) string {
				return req("PUT "+uploads+uploadSession+"?Digest="+f.v1.Digest.String(), "", "Content-Length: 0")
			},
			want: []answer{caseRefused}},
		{name: "digest given twice to an upload start",
			raw: func(f hostileFixture) string {
				return req("POST "+uploads+"?digest="+f.v1.Digest.String()+"&digest="+f.other.Digest.String(), "", "Content-Length: 0")
			}, want: []answer{queryRefused}},
		{name: "MOUNT= with from=",
			raw: func(f hostileFixture) string {
				return req("POST "+uploads+"?MOUNT="+f.v1.Digest.String()+"&from=team/other", "", "Content-Length: 0")
			},
			want: []answer{caseRefused}},
		{name: "artifactType given twice",
			raw: func(f hostileFixture) string {
				return req("GET /v2/team/app/referrers/"+f.v1.Digest.String()+"?artifactType=a/b&artifactType=c/d", "")
			}, want: []answer{queryRefused}},

		// Size.
		{name: "a header of more than 1 MiB", raw: fixed(req(deleteV1, "", "X-Big: "+strings.Repeat("a", 1<<20+4096))), want: []answer{httpTooLarge}},
		{name: "a request target of more than 1 MiB", raw: fixed(req("DELETE /v2/"+strings.Repeat("a/", 1<<19+4096)+"manifests/v1", "")), want: []answer{httpTooLarge}},
		{name: "5000 headers on a delete", raw: fixed(req(deleteV1, "", strings.Repeat("X-Many: a\r\n", 4999)+"X-Many: a")), want: []answer{denied}},

		// Methods and syntax.
		{name: "lower-case method", raw: fixed(req("delete /v2/team/app/manifests/v1", "")), want: []answer{methodRefused}},
		{name: "control byte in the method", raw: fixed(req("DEL\x01ETE /v2/team/app/manifests/v1", "")), want: []answer{httpBadRequest}},
		{name: "method override header", raw: fixed(req("POST /v2/team/app/manifests/v1", "", "X-HTTP-Method-Override: DELETE", "Content-Length: 0")),
			want: []answer{methodRefused}},
		{name: "HTTP/1.0 without Host", raw: fixed(deleteV1 + " HTTP/1.0\r\n\r\n"), want: []answer{denied}},
		{name: "HTTP/2.0 in an HTTP/1 request line", raw: fixed(deleteV1 + " HTTP/2.0\r\nHost: registry.test\r\n\r\n"),
			want: []answer{{505, "", "unsupported protocol version"}}},
		{name: "space before the method", raw: fixed(req(" "+deleteV1, "")), want: []answer{httpBadRequest}},
		{name: "NUL in a header value", raw: fixed(req(deleteV1, "", "X-Null: a\x00b")), want: []answer{httpBadRequest}},
		{name: "bare CR in a header value", raw: fixed(req(deleteV1, "", "X-CR: a\rX-Injected: b")), want: []answer{httpBadRequest}},
		{name: "obsolete line folding", raw: fixed(req(deleteV1, "", "X-Folded: a\r\n b")), want: []answer{denied}},

		// Slow clients.
		{name: "headers sent a byte at a time",
			send: func(conn net.Conn, f hostileFixture) error {
				return trickle(conn, req(deleteV1, ""), 1, time.Millisecond)
			},
			want: []answer{denied}},
		{name: "manifest body trickled in pieces",
			send: func(conn net.Conn, f hostileFixture) error { return trickle(conn, moveV1(f), 16, 5*time.Millisecond) },
			want: []answer{denied}},
		{name: "client hangs up halfway through the manifest body",
			send: func(conn net.Conn, f hostileFixture) error {
				m := moveV1(f)
				if _, err := io.WriteString(conn, m[:len(m)-len(f.other.Raw)/2]); err != nil {
					return err
				}
				time.Sleep(100 * time.Millisecond)
				return nil
			}},
	}
}

// moveOn is a PUT of the other image to target: a move of v1 if target
// meant team/app:v1.
func moveOn(target string) func(hostileFixture) string {
	return func(f hostileFixture) string { return put(target, f.other) }
}

// byDigest is a PUT of the other image by its digest, with query.
func byDigest(query string) func(hostileFixture) string {
	return func(f hostileFixture) string { return put(manifests+f.other.Digest.String()+query, f.other) }
}

// trickle writes s n bytes at a time, pausing between writes.
func trickle(conn net.Conn, s string, n int, pause time.Duration) error {
	for len(s) > 0 {
		k := min(n, len(s))
		if _, err := io.WriteString(conn, s[:k]); err != nil {
			return err
		}
		s = s[k:]
		time.Sleep(pause)
	}
	return nil
}
