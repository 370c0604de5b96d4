package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
)

// A request reaches the upstream in one of two ways. forward (Server)
// streams a client's request and the answer through unchanged, for
// everything taglock does not decide. send makes the writes taglock decides
// (a manifest PUT, a DELETE) itself, with a deadline the reservation
// records, and relay then copies the upstream's answer to the client.

// send makes one of taglock's own writes to the upstream: method on u, with
// the headers h (a client's, passed through, or taglock's own) and, for a
// client's request, its Host, carrying body, giving up at deadline. Closing
// the answer's body ends the request. A failure to get an answer wraps
// ErrLookup.
func send(ctx context.Context, up Upstream, method string, u *url.URL, h http.Header, host string, body []byte, deadline time.Time) (*http.Response, error) {
	ctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	var rd io.Reader = http.NoBody
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		cancel()
		return nil, err
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	req.Header.Del("Content-Length")
	req.ContentLength = int64(len(body))
	req.Host = host
	resp, err := up.RoundTrip(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%w: %s %s: %v", ErrLookup, method, u.Path, err)
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// relay writes an answer send got to the client. A 2xx answer to a
// manifest PUT carries dgst, the digest taglock computed from the bytes it
// forwarded, as its Docker-Content-Digest; dgst "" leaves the headers as
// they are.
func relay(w http.ResponseWriter, resp *http.Response, dgst digest.Digest, log zerolog.Logger) error {
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	if dgst != "" && resp.StatusCode/100 == 2 {
		if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != dgst.String() {
			log.Warn().Str("computed", dgst.String()).Str("upstream", got).Msg("upstream reported a different manifest digest; using the computed one")
		}
		w.Header().Set("Docker-Content-Digest", dgst.String())
	}
	w.WriteHeader(resp.StatusCode)
	if _, err := io.Copy(w, resp.Body); err != nil {
		log.Debug().Err(err).Msg("relay: copy to client")
	}
	return nil
}

// cancelBody releases a request's context when its response is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
