package proxy

import (
	"io"
	"net/http"
	"time"
)

// Upstream wraps up so that every request it carries is measured:
// taglock_upstream_duration_seconds (time to response headers) and, for
// streamed client requests, taglock_proxied_bytes_total. A nil m returns up
// unchanged.
func (m *Metrics) Upstream(up Upstream) Upstream {
	if m == nil {
		return up
	}
	return &meteredUpstream{up: up, m: m}
}

type meteredUpstream struct {
	up Upstream
	m  *Metrics
}

// Forward implements Upstream.
func (u *meteredUpstream) Forward(w http.ResponseWriter, r *http.Request) {
	mw := &meteredWriter{ResponseWriter: w, start: time.Now(), m: u.m, method: r.Method}
	var body *meteredBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &meteredBody{ReadCloser: r.Body}
		r.Body = body
	}
	u.up.Forward(mw, r)
	mw.headers()
	if mw.n > 0 {
		u.m.bytes.WithLabelValues("out").Add(float64(mw.n))
	}
	if body != nil && body.n > 0 {
		u.m.bytes.WithLabelValues("in").Add(float64(body.n))
	}
}

// RoundTrip implements Upstream.
func (u *meteredUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := u.up.RoundTrip(r)
	u.m.upstream.WithLabelValues("lookup", r.Method).Observe(time.Since(start).Seconds())
	return resp, err
}

// meteredWriter observes the time to the first header and counts the body.
type meteredWriter struct {
	http.ResponseWriter
	start  time.Time
	m      *Metrics
	method string
	done   bool
	n      int64
}

func (w *meteredWriter) headers() {
	if !w.done {
		w.done = true
		w.m.upstream.WithLabelValues("forward", w.method).Observe(time.Since(w.start).Seconds())
	}
}

func (w *meteredWriter) WriteHeader(code int) {
	if code >= 200 {
		w.headers()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *meteredWriter) Write(b []byte) (int, error) {
	w.headers()
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

// ReadFrom keeps the sendfile path of the writer below.
func (w *meteredWriter) ReadFrom(r io.Reader) (int64, error) {
	w.headers()
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(w.ResponseWriter, r)
	}
	w.n += n
	return n, err
}

// Flush implements http.Flusher for streamed responses.
func (w *meteredWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the writer below.
func (w *meteredWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// meteredBody counts what the upstream reads of a request body.
type meteredBody struct {
	io.ReadCloser
	n int64
}

func (b *meteredBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}
