package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	digest "github.com/opencontainers/go-digest"
)

// This file gives retention (internal/retention) taglock's own view of the
// upstream: listings, manifests and deletes that go to the upstream
// directly, without the proxy's policy checks. Retention decides what may
// be deleted and records tombstones itself.

// UpstreamRepositories lists every repository in the upstream's catalog.
func (s *Server) UpstreamRepositories(ctx context.Context) ([]string, error) {
	return s.catalog(ctx, newLimiter(0))
}

// UpstreamTags lists every tag of repo on the upstream; a repository the
// upstream does not know has none.
func (s *Server) UpstreamTags(ctx context.Context, repo string) ([]string, error) {
	return s.allTags(ctx, newLimiter(0), repo)
}

// UpstreamManifest reads manifest ref (a tag or a digest) of repo from the
// upstream with the full Accept list. found is false on a 404.
func (s *Server) UpstreamManifest(ctx context.Context, repo, ref string) (body []byte, mediaType string, found bool, err error) {
	return s.getManifest(ctx, http.Header{}, repo, ref)
}

// UpstreamDelete sends DELETE /v2/<repo>/manifests/<ref> to the upstream.
// found is false when the upstream answered 404 (already gone). Any other
// answer than 2xx or 404 is an error.
func (s *Server) UpstreamDelete(ctx context.Context, repo, ref string) (found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if strings.Contains(ref, ":") {
		if _, err := digest.Parse(ref); err != nil {
			return false, fmt.Errorf("delete %s@%s: %w", repo, ref, err)
		}
	}
	req, err := newRequest(ctx, http.MethodDelete, &url.URL{Path: "/v2/" + repo + "/manifests/" + ref}, nil, http.Header{})
	if err != nil {
		return false, err
	}
	resp, err := s.up.RoundTrip(req)
	if err != nil {
		return false, fmt.Errorf("%w: DELETE %s/manifests/%s: %v", ErrLookup, repo, ref, err)
	}
	defer drain(resp)
	switch {
	case resp.StatusCode/100 == 2:
		return true, nil
	case resp.StatusCode == http.StatusNotFound:
		return false, nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return false, fmt.Errorf("upstream answered DELETE %s/manifests/%s with %d: %s", repo, ref, resp.StatusCode, strings.TrimSpace(string(msg)))
}
