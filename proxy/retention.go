package proxy

import (
	"context"
	"net/http"
)

// This file gives retention (internal/retention) taglock's own view of the
// upstream: listings and manifests read directly, without the proxy's
// policy checks. Retention decides what may be deleted; its deletes go
// through Remove, under the same reservations as every other delete.

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
