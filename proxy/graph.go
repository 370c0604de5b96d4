package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/taglock/taglock/storage"
)

// graphs knows what manifests reference: from the ledger's records, or from
// the upstream when taglock never saw a manifest. Everything an immutable
// tag depends on is found here, however deep the graph.
type graphs struct {
	ledger Ledger
	read   reader
	log    zerolog.Logger
}

// maxGraphManifests bounds how many child manifests one manifest's graph
// may hold. taglock protects a binding's whole graph or binds nothing, so a
// graph larger than this is refused rather than partly protected.
const maxGraphManifests = 1000

// lookupParallelism is how many child manifests walk fetches from the
// upstream at once.
const lookupParallelism = 8

// graph is what walk learned about a manifest's graph.
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

// walk walks the whole graph below refs, level by level, with no depth
// limit: every blob, every child manifest and, recursively, theirs. Each
// manifest is visited once, so cycles end, and the number of child manifests
// is bounded by maxGraphManifests, checked before each level is fetched, so
// an index naming thousands of children is refused before any lookup. Child
// manifests come from the ledger, or from the upstream (lookupParallelism at
// a time) when taglock never saw them.
func (gs graphs) walk(ctx context.Context, h http.Header, repo string, refs manifestRefs) (graph, error) {
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
				children[i], learned[i], err = gs.child(ectx, h, repo, d)
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
func (gs graphs) checkPresent(ctx context.Context, h http.Header, repo string, g graph) error {
	missing := make([]bool, len(g.indirect))
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(lookupParallelism)
	for i, d := range g.indirect {
		eg.Go(func() error {
			what := "blobs"
			if g.children[d] {
				what = "manifests"
			}
			gone, err := gs.read.absent(ectx, h, "/v2/"+repo+"/"+what+"/"+d.String())
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

// child returns what child manifest d references, from the ledger's
// record, or from the upstream with the record to keep.
func (gs graphs) child(ctx context.Context, h http.Header, repo string, d digest.Digest) (manifestRefs, *storage.Manifest, error) {
	m, err := gs.ledger.Manifest(ctx, repo, d)
	if err == nil {
		return manifestRefs{MediaType: m.MediaType, Children: m.Children, Blobs: m.Blobs, Subject: m.Subject}, nil, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return manifestRefs{}, nil, fmt.Errorf("%w: manifest %s: %v", ErrLedger, d, err)
	}
	body, mediaType, found, err := gs.read.manifest(ctx, h, repo, d.String())
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

// record remembers what manifests reference. It is a cache of the
// upstream's graph, so a failure is logged, not fatal: walk falls back to
// the upstream.
func (gs graphs) record(ctx context.Context, ms ...storage.Manifest) {
	for _, m := range ms {
		if err := gs.ledger.PutManifest(context.WithoutCancel(ctx), m); err != nil {
			gs.log.Warn().Err(err).Str("repo", m.Repo).Str("digest", m.Digest.String()).Msg("could not record manifest references")
		}
	}
}

// manifestRecord is the ledger's record of what manifest d references.
func manifestRecord(repo string, d digest.Digest, size int64, refs manifestRefs) storage.Manifest {
	return storage.Manifest{Repo: repo, Digest: d, MediaType: refs.MediaType, Size: size, Children: refs.Children,
		Blobs: refs.Blobs, Subject: refs.Subject, ArtifactType: refs.ArtifactType}
}
