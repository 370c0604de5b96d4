package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// adopt looks a tag up on the upstream and, when it exists, records its
// digest as the binding, so tags that predate taglock are protected too.
// The digest is computed from the bytes received, never taken from a header.
func (s *Server) adopt(ctx context.Context, h http.Header, repo, tag string, mode policy.Mode, rule string) (storage.Binding, bool, error) {
	body, mediaType, found, err := s.getManifest(ctx, h, repo, tag)
	if err != nil || !found {
		return storage.Binding{}, false, err
	}
	dgst := digest.FromBytes(body)
	refs, err := parseManifest(mediaType, body)
	if err != nil {
		return storage.Binding{}, false, fmt.Errorf("%w: upstream manifest %s:%s does not parse: %v", ErrLookup, repo, tag, err)
	}
	g, err := s.closure(ctx, h, repo, refs)
	if err != nil {
		return storage.Binding{}, false, err
	}
	now := s.now()
	b := storage.Binding{Repo: repo, Tag: tag, Digest: dgst, MediaType: refs.MediaType, Size: int64(len(body)),
		Mode: mode.String(), Rule: rule, PushedAt: now, PushedBy: "upstream (adopted)", Closure: g.closure}
	if mode == policy.Immutable {
		b.Manifest = body
	}
	ri := info(ctx)
	ev := storage.Event{Time: now, Kind: storage.EventAdopted, Repo: repo, Tag: tag, Digest: dgst, User: ri.user, Rule: rule,
		RequestID: ri.id, Message: "tag existed on the upstream before taglock recorded it; its digest is now the binding"}
	if err := s.ledger.Put(ctx, []storage.Binding{b}, []storage.Event{ev}); err != nil {
		return storage.Binding{}, false, fmt.Errorf("%w: adopt: %v", ErrLedger, err)
	}
	s.recordManifests(ctx, append(g.learned, manifestRecord(repo, dgst, int64(len(body)), refs)))
	s.audit.Info().Str("event", "adopted").Str("repo", repo).Str("tag", tag).Str("digest", dgst.String()).Str("rule", rule).
		Str("request_id", ri.id).Msg("adopted upstream tag into the ledger")
	return b, true, nil
}

// getManifest GETs a manifest with the full Accept list and the client's
// credentials. found is false only on a definite 404; a 401/403 is relayed
// to the client as it is; anything else fails closed.
func (s *Server) getManifest(ctx context.Context, h http.Header, repo, ref string) (body []byte, mediaType string, found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	hdr := http.Header{"Accept": {strings.Join(manifestAccept, ", ")}}
	if a := h.Get("Authorization"); a != "" {
		hdr.Set("Authorization", a)
	}
	req, err := newRequest(ctx, http.MethodGet, &url.URL{Path: "/v2/" + repo + "/manifests/" + ref}, nil, hdr)
	if err != nil {
		return nil, "", false, err
	}
	resp, err := s.up.RoundTrip(req)
	if err != nil {
		return nil, "", false, fmt.Errorf("%w: GET %s:%s: %v", ErrLookup, repo, ref, err)
	}
	defer drain(resp)
	switch {
	case resp.StatusCode == http.StatusOK:
		body, err := io.ReadAll(io.LimitReader(resp.Body, s.maxManifest+1))
		if err != nil {
			return nil, "", false, fmt.Errorf("%w: GET %s:%s: %v", ErrLookup, repo, ref, err)
		}
		if int64(len(body)) > s.maxManifest {
			return nil, "", false, fmt.Errorf("%w: upstream manifest %s:%s exceeds %d bytes", ErrLookup, repo, ref, s.maxManifest)
		}
		return body, resp.Header.Get("Content-Type"), true, nil
	case resp.StatusCode == http.StatusNotFound:
		return nil, "", false, nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		hdr := http.Header{}
		for _, k := range []string{"Www-Authenticate", "Content-Type", "Docker-Distribution-Api-Version"} {
			if v := resp.Header.Values(k); len(v) > 0 {
				hdr[k] = v
			}
		}
		return nil, "", false, &upstreamAnswer{status: resp.StatusCode, header: hdr, body: b}
	default:
		return nil, "", false, fmt.Errorf("%w: GET %s:%s answered %d", ErrLookup, repo, ref, resp.StatusCode)
	}
}

// maxGraphManifests bounds how many child manifests one manifest's graph
// may hold. taglock protects a binding's whole graph or binds nothing, so a
// graph larger than this is refused rather than partly protected.
const maxGraphManifests = 1000

// lookupParallelism is how many child manifests closure fetches from the
// upstream at once.
const lookupParallelism = 8

// graph is what closure learned about a manifest's graph.
type graph struct {
	// closure is every child manifest and blob the manifest references,
	// transitively: what deleting would break a binding of it.
	closure []digest.Digest
	// learned are the child manifests fetched from the upstream because
	// the ledger had no record of them; the caller records them.
	learned []storage.Manifest
	// children are the child manifests in closure; the rest are blobs.
	children map[digest.Digest]bool
	// indirect is what closure holds below the manifest's own references:
	// the registry checks that a manifest's direct references exist when
	// it is pushed, never what they reference in turn.
	indirect []digest.Digest
}

// graphTooLarge is a manifest graph over maxGraphManifests.
type graphTooLarge struct{ manifests int }

func (e *graphTooLarge) Error() string {
	return fmt.Sprintf("the manifest's graph holds more than %d child manifests (%d seen); taglock protects every manifest and blob an immutable tag depends on, so it refuses a graph it cannot walk whole", maxGraphManifests, e.manifests)
}

// closure walks the whole graph below refs, level by level, with no depth
// limit: every blob, every child manifest and, recursively, theirs. Each
// manifest is visited once, so cycles end, and the number of child manifests
// is bounded by maxGraphManifests, checked before each level is fetched, so
// an index naming thousands of children is refused before any lookup. Child
// manifests come from the ledger, or from the upstream (lookupParallelism at
// a time) when taglock never saw them.
func (s *Server) closure(ctx context.Context, h http.Header, repo string, refs manifestRefs) (graph, error) {
	g := graph{children: map[digest.Digest]bool{}}
	seen := map[digest.Digest]bool{}
	var frontier []digest.Digest
	direct := true
	add := func(refs manifestRefs) {
		for _, b := range refs.Blobs {
			if !seen[b] {
				seen[b] = true
				g.closure = append(g.closure, b)
				if !direct {
					g.indirect = append(g.indirect, b)
				}
			}
		}
		for _, c := range refs.Children {
			if !seen[c] {
				seen[c] = true
				g.children[c] = true
				g.closure = append(g.closure, c)
				frontier = append(frontier, c)
				if !direct {
					g.indirect = append(g.indirect, c)
				}
			}
		}
	}
	add(refs)
	direct = false
	manifests := 0
	for len(frontier) > 0 {
		level := frontier
		frontier = nil
		if manifests += len(level); manifests > maxGraphManifests {
			return graph{}, &graphTooLarge{manifests: manifests}
		}
		children := make([]manifestRefs, len(level))
		learned := make([]*storage.Manifest, len(level))
		eg, ectx := errgroup.WithContext(ctx)
		eg.SetLimit(lookupParallelism)
		for i, d := range level {
			eg.Go(func() error {
				var err error
				children[i], learned[i], err = s.childRefs(ectx, h, repo, d)
				return err
			})
		}
		if err := eg.Wait(); err != nil {
			return graph{}, err
		}
		for i := range level {
			add(children[i])
			if learned[i] != nil {
				g.learned = append(g.learned, *learned[i])
			}
		}
	}
	return g, nil
}

// checkPresent fails with a 400 naming the first digest of g.indirect the
// upstream no longer has: a tag is bound only to a graph that pulls whole,
// and the registry itself checks only a manifest's direct references. The
// caller holds a reservation on the graph, so nothing can be deleted
// through taglock between this check and the binding.
func (s *Server) checkPresent(ctx context.Context, h http.Header, repo string, g graph) error {
	missing := make([]bool, len(g.indirect))
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(lookupParallelism)
	for i, d := range g.indirect {
		eg.Go(func() error {
			what := "blobs"
			if g.children[d] {
				what = "manifests"
			}
			gone, err := s.absentAs(ectx, h, "/v2/"+repo+"/"+what+"/"+d.String())
			missing[i] = gone
			return err
		})
	}
	if err := eg.Wait(); err != nil {
		return err
	}
	for i, gone := range missing {
		if gone {
			return &requestError{code: errcode.ErrorCodeManifestBlobUnknown, status: http.StatusBadRequest,
				msg: fmt.Sprintf("the manifest's graph references %s, which the registry no longer has; taglock binds a tag only to content that pulls whole: push %s again first", g.indirect[i], g.indirect[i])}
		}
	}
	return nil
}

// childRefs returns what child manifest d references, from the ledger's
// record, or from the upstream with the record to keep.
func (s *Server) childRefs(ctx context.Context, h http.Header, repo string, d digest.Digest) (manifestRefs, *storage.Manifest, error) {
	m, err := s.ledger.Manifest(ctx, repo, d)
	if err == nil {
		return manifestRefs{MediaType: m.MediaType, Children: m.Children, Blobs: m.Blobs, Subject: m.Subject}, nil, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return manifestRefs{}, nil, fmt.Errorf("%w: manifest %s: %v", ErrLedger, d, err)
	}
	body, mediaType, found, err := s.getManifest(ctx, h, repo, d.String())
	if err != nil {
		return manifestRefs{}, nil, err
	}
	if !found {
		// The upstream decides whether an index may name a missing
		// child; there is nothing below it to protect.
		return manifestRefs{}, nil, nil
	}
	if got := d.Algorithm().FromBytes(body); got != d {
		return manifestRefs{}, nil, fmt.Errorf("%w: upstream returned content with digest %s for %s", ErrLookup, got, d)
	}
	refs, err := parseManifest(mediaType, body)
	if err != nil {
		return manifestRefs{}, nil, fmt.Errorf("%w: child manifest %s does not parse: %v", ErrLookup, d, err)
	}
	rec := manifestRecord(repo, d, int64(len(body)), refs)
	return refs, &rec, nil
}

// recordManifest remembers what a manifest references. It is a cache of the
// upstream's graph, so a failure is logged, not fatal: closure falls back to
// the upstream.
func (s *Server) recordManifest(ctx context.Context, repo string, d digest.Digest, size int64, refs manifestRefs) {
	s.recordManifests(ctx, []storage.Manifest{manifestRecord(repo, d, size, refs)})
}

// recordManifests is recordManifest for several records.
func (s *Server) recordManifests(ctx context.Context, ms []storage.Manifest) {
	for _, m := range ms {
		if err := s.ledger.PutManifest(context.WithoutCancel(ctx), m); err != nil {
			s.log.Warn().Err(err).Str("repo", m.Repo).Str("digest", m.Digest.String()).Msg("could not record manifest references")
		}
	}
}

// manifestRecord is the ledger's record of what manifest d references.
func manifestRecord(repo string, d digest.Digest, size int64, refs manifestRefs) storage.Manifest {
	return storage.Manifest{Repo: repo, Digest: d, MediaType: refs.MediaType, Size: size, Children: refs.Children,
		Blobs: refs.Blobs, Subject: refs.Subject, ArtifactType: refs.ArtifactType}
}

// adoptRepo adopts every upstream tag of repo that the ledger has never
// seen, mutable ones included, so a delete by digest or of a blob sees every
// tag it could remove or break: to protect the immutable ones, to ask the
// access rules about each, and to record each one it removes.
func (s *Server) adoptRepo(ctx context.Context, h http.Header, repo string) error {
	last := ""
	for range 10000 {
		tags, next, err := s.listTags(ctx, h, repo, last)
		if err != nil {
			return err
		}
		for _, tag := range tags {
			mode, rule := s.im.ModeFor(repo, tag)
			if _, err := s.ledger.Binding(ctx, repo, tag); err == nil {
				continue
			} else if !errors.Is(err, storage.ErrNotFound) {
				return fmt.Errorf("%w: binding %s:%s: %v", ErrLedger, repo, tag, err)
			}
			if _, _, err := s.adopt(ctx, h, repo, tag, mode, rule); err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
		last = next
	}
	return fmt.Errorf("%w: tag list of %s did not end", ErrLookup, repo)
}

// listTags reads one page of the upstream's tag list. next is the last tag
// to continue from, or "" at the end.
func (s *Server) listTags(ctx context.Context, h http.Header, repo, last string) (tags []string, next string, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	q := url.Values{"n": {"1000"}}
	if last != "" {
		q.Set("last", last)
	}
	hdr := http.Header{}
	if a := h.Get("Authorization"); a != "" {
		hdr.Set("Authorization", a)
	}
	req, err := newRequest(ctx, http.MethodGet, &url.URL{Path: "/v2/" + repo + "/tags/list", RawQuery: q.Encode()}, nil, hdr)
	if err != nil {
		return nil, "", err
	}
	resp, err := s.up.RoundTrip(req)
	if err != nil {
		return nil, "", fmt.Errorf("%w: tag list %s: %v", ErrLookup, repo, err)
	}
	defer drain(resp)
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, "", nil // no such repository: nothing to adopt
	case http.StatusUnauthorized, http.StatusForbidden:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, "", &upstreamAnswer{status: resp.StatusCode, header: http.Header{"Www-Authenticate": resp.Header.Values("Www-Authenticate"), "Content-Type": resp.Header.Values("Content-Type")}, body: b}
	default:
		return nil, "", fmt.Errorf("%w: tag list %s answered %d", ErrLookup, repo, resp.StatusCode)
	}
	var list struct {
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&list); err != nil {
		return nil, "", fmt.Errorf("%w: tag list %s: %v", ErrLookup, repo, err)
	}
	if resp.Header.Get("Link") != "" && len(list.Tags) > 0 {
		next = list.Tags[len(list.Tags)-1]
	}
	return list.Tags, next, nil
}
