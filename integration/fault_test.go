package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/taglock/taglock/proxy"
)

// Fault is what a FaultUpstream does to one of taglock's own requests to
// the registry (manifest pushes and deletes, lookups).
type Fault struct {
	// Delay postpones forwarding the request. The request is then on its
	// way to the registry whatever taglock does: if taglock gives up
	// first, it still lands later, as a request already sent does.
	Delay time.Duration
	// Hold, when not nil, postpones forwarding until it is closed, like
	// Delay.
	Hold <-chan struct{}
	// Status, when not zero, replaces the registry's answer with this
	// status and an OCI error body, after the registry handled the request
	// (unless Drop).
	Status int
	// Drop answers with a transport error instead of the registry's
	// answer, after the registry handled the request.
	Drop bool
	// Skip does not forward the request at all (with Status or Drop).
	Skip bool
	// Header, when not nil, sets these headers on the registry's answer
	// (an empty value deletes the header).
	Header http.Header
}

// FaultUpstream sits between taglock's proxy and its registry, embedded or
// separate, and injects faults into the requests its rule picks.
type FaultUpstream struct {
	next proxy.Upstream
	rule func(*http.Request) *Fault

	mu     sync.Mutex
	landed []string // "METHOD path" of faulted requests the registry handled
	wg     sync.WaitGroup
}

// InjectFaults makes e's taglock reach its registry through a FaultUpstream
// whose rule picks the requests to fault (nil for none). Call it before
// Start.
func (e *Env) InjectFaults(t *testing.T, rule func(*http.Request) *Fault) *FaultUpstream {
	t.Helper()
	f := &FaultUpstream{rule: rule}
	e.hooks.Upstream = func(up proxy.Upstream) proxy.Upstream {
		f.next = up
		return f
	}
	t.Cleanup(f.wg.Wait)
	return f
}

// Forward implements proxy.Upstream; streamed client traffic is not
// faulted.
func (f *FaultUpstream) Forward(w http.ResponseWriter, r *http.Request) { f.next.Forward(w, r) }

// RoundTrip implements proxy.Upstream.
func (f *FaultUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	fault := f.rule(r)
	if fault == nil {
		return f.next.RoundTrip(r)
	}
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		r.Body.Close()
	}
	if fault.Skip {
		return f.answer(r, fault, nil, nil)
	}
	// The request travels on its own from here: detached from taglock's
	// context, so that giving up does not recall it.
	out := r.Clone(context.Background())
	out.Body = io.NopCloser(bytes.NewReader(body))
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if fault.Delay > 0 {
			time.Sleep(fault.Delay)
		}
		if fault.Hold != nil {
			<-fault.Hold
		}
		resp, err := f.next.RoundTrip(out)
		if err == nil {
			// Read the whole answer, so the registry has finished
			// handling the request before anyone looks.
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			resp.Body = io.NopCloser(bytes.NewReader(b))
			f.mu.Lock()
			f.landed = append(f.landed, r.Method+" "+r.URL.Path)
			f.mu.Unlock()
		}
		done <- result{resp, err}
	}()
	select {
	case <-r.Context().Done():
		return nil, r.Context().Err()
	case res := <-done:
		return f.answer(r, fault, res.resp, res.err)
	}
}

func (f *FaultUpstream) answer(r *http.Request, fault *Fault, resp *http.Response, err error) (*http.Response, error) {
	switch {
	case fault.Drop:
		return nil, errors.New("fault: connection reset by the registry")
	case fault.Header != nil && resp != nil:
		for k, vs := range fault.Header {
			if len(vs) == 1 && vs[0] == "" {
				resp.Header.Del(k)
				continue
			}
			resp.Header[http.CanonicalHeaderKey(k)] = vs
		}
		return resp, err
	case fault.Status != 0:
		return &http.Response{StatusCode: fault.Status, Status: http.StatusText(fault.Status),
			Header:  http.Header{"Content-Type": {"application/json"}},
			Body:    io.NopCloser(strings.NewReader(`{"errors":[{"code":"UNKNOWN","message":"fault injected"}]}`)),
			Request: r, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}, nil
	}
	return resp, err
}

// Landed lists the faulted requests the registry handled, "METHOD path".
func (f *FaultUpstream) Landed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.landed...)
}

// WaitLanded waits until the registry handled n faulted requests.
func (f *FaultUpstream) WaitLanded(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for len(f.Landed()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("after %s the registry handled %v, want %d faulted requests", within, f.Landed(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ShortenWait makes e's taglock wait at most d for a conflicting request in
// flight before answering 503. Call it before Start.
func (e *Env) ShortenWait(d time.Duration) { e.hooks.ReserveWait = d }

// manifestPut picks PUTs of manifests by the given tag.
func manifestPut(repo, tag string) func(*http.Request) bool {
	return func(r *http.Request) bool {
		return r.Method == http.MethodPut && r.URL.Path == "/v2/"+repo+"/manifests/"+tag
	}
}
