package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"

	"github.com/rs/zerolog"
)

// Upstream is the registry behind taglock.
type Upstream interface {
	// Forward streams r to the registry and the answer back to w. r's URL
	// is already rebuilt from the parsed route.
	Forward(w http.ResponseWriter, r *http.Request)
	// RoundTrip sends taglock's own request (lookups, manifest writes)
	// and returns the complete response.
	RoundTrip(r *http.Request) (*http.Response, error)
}

// copyBufferSize is the buffer for streamed bodies. Measured on loopback, the
// default 32 KiB buffers held downloads to about 0.67x of direct; 256 KiB
// reaches parity.
const copyBufferSize = 256 << 10

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte  { return *(b.p.Get().(*[]byte)) }
func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}}
}

// Remote is an Upstream reached over HTTP(S).
type Remote struct {
	base   *url.URL
	client *http.Client
	rp     *httputil.ReverseProxy
}

// NewRemote returns an Upstream for the registry at base (scheme://host)
// using transport for every request. When the registry cannot be reached
// while a client's request is streamed to it, the client gets a 502 with an
// OCI error body, and log gets one line (nothing goes to the standard
// library's logger).
func NewRemote(base *url.URL, transport http.RoundTripper, log zerolog.Logger) *Remote {
	u := &Remote{base: base, client: &http.Client{
		Transport: transport,
		// Redirects are the client's business; taglock's own lookups
		// must see the upstream's answer as it is.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
	u.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = base.Scheme
			pr.Out.URL.Host = base.Host
			pr.Out.Host = base.Host
		},
		Transport:      transport,
		BufferPool:     newBufferPool(),
		ModifyResponse: func(resp *http.Response) error { rewriteLocation(resp, base); return nil },
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
				return // the client went away; nobody reads an answer
			}
			writeError(w, fmt.Errorf("%w: %s %s: %v", errUnreachable, r.Method, r.URL.Path, err), &log)
		},
		// Only reached for what ErrorHandler does not see (a panic
		// aborting a copy): keep it off the standard logger.
		ErrorLog: stdlog.New(log, "", 0),
	}
	return u
}

// Forward implements Upstream.
func (u *Remote) Forward(w http.ResponseWriter, r *http.Request) { u.rp.ServeHTTP(w, r) }

// RoundTrip implements Upstream.
func (u *Remote) RoundTrip(r *http.Request) (*http.Response, error) {
	out := r.Clone(r.Context())
	out.URL.Scheme = u.base.Scheme
	out.URL.Host = u.base.Host
	out.Host = u.base.Host
	out.RequestURI = ""
	resp, err := u.client.Do(out)
	if err != nil {
		return nil, err
	}
	rewriteLocation(resp, u.base)
	return resp, nil
}

// rewriteLocation makes a Location on the upstream's host relative, so the
// client's next request comes back to taglock. Locations on other hosts
// (object-storage redirects for blob downloads) are left alone.
func rewriteLocation(resp *http.Response, base *url.URL) {
	loc := resp.Header.Get("Location")
	if loc == "" {
		return
	}
	u, err := url.Parse(loc)
	if err != nil || !u.IsAbs() {
		return
	}
	if strings.EqualFold(u.Host, base.Host) {
		u.Scheme, u.Host, u.User = "", "", nil
		resp.Header.Set("Location", u.String())
	}
}

// InProcess is an Upstream served by an http.Handler in this process: the
// embedded registry. Nothing crosses a socket.
type InProcess struct {
	h http.Handler
}

// NewInProcess returns an Upstream that calls h directly.
func NewInProcess(h http.Handler) *InProcess { return &InProcess{h: h} }

// Forward implements Upstream.
func (u *InProcess) Forward(w http.ResponseWriter, r *http.Request) { u.h.ServeHTTP(w, r) }

// RoundTrip implements Upstream. It buffers the response, so it is used only
// for manifests and other small bodies.
func (u *InProcess) RoundTrip(r *http.Request) (*http.Response, error) {
	if err := r.Context().Err(); err != nil {
		return nil, err
	}
	rec := &recorder{header: http.Header{}}
	req := r.Clone(r.Context())
	req.RequestURI = req.URL.RequestURI()
	if req.Body == nil {
		req.Body = http.NoBody
	}
	u.h.ServeHTTP(rec, req)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return &http.Response{
		StatusCode:    rec.status,
		Status:        http.StatusText(rec.status),
		Header:        rec.header,
		Body:          io.NopCloser(&rec.body),
		ContentLength: int64(rec.body.Len()),
		Request:       r,
		Proto:         "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
	}, nil
}

// recorder is the smallest http.ResponseWriter that keeps what it is given.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

// newRequest builds one of taglock's own requests to the upstream, carrying
// the client's credentials (passthrough) when given.
func newRequest(ctx context.Context, method string, u *url.URL, body []byte, header http.Header) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	return req, nil
}
