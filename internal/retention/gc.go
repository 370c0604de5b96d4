package retention

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/distribution/distribution/v3"
	dstorage "github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
)

// GCResult is what a garbage collection freed.
type GCResult struct {
	// BlobsDeleted counts blobs removed from storage.
	BlobsDeleted int `json:"blobsDeleted"`
	// Protected counts unreferenced blobs kept because a push was still
	// using them (uploaded, manifest not pushed yet).
	Protected int `json:"protected"`
	// BytesBefore and BytesAfter measure blob storage around the sweep;
	// BytesFreed is their difference.
	BytesBefore int64 `json:"bytesBefore"`
	BytesAfter  int64 `json:"bytesAfter"`
	BytesFreed  int64 `json:"bytesFreed"`
	// Deferred is set when the collection did not run because it could
	// not start safely (writes still in flight); nothing was swept, and
	// the next run collects even if it deletes nothing. Reason says why.
	Deferred bool   `json:"deferred,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// collect runs garbage collection after a run. A collection deferred or
// failed is remembered in the ledger as owed, so the next run collects even if it
// deletes nothing; one that ran clears the debt.
func (r *Runner) collect(ctx context.Context) (GCResult, error) {
	gc, err := r.gc(ctx, r.boundContent)
	if err == nil && !gc.Deferred {
		r.audit.Info().Str("event", "retention-gc").Int64("bytes_freed", gc.BytesFreed).Int("blobs_deleted", gc.BlobsDeleted).
			Msg("retention: reclaimed blob storage")
		return gc, r.oweGC(ctx, false)
	}
	if oerr := r.oweGC(ctx, true); err == nil {
		err = oerr
	}
	if err != nil {
		return gc, err
	}
	r.audit.Warn().Str("event", "retention-gc-deferred").Str("reason", gc.Reason).
		Msg("retention: garbage collection deferred to the next run")
	return gc, nil
}

// gcOwed reports whether an earlier run deferred or failed its collection.
func (r *Runner) gcOwed(ctx context.Context) (bool, error) {
	st, err := r.ledger.JobStates(ctx, stateGCOwed)
	if err != nil {
		return false, fmt.Errorf("retention state: %w", err)
	}
	_, owed := st[stateGCOwed]
	return owed, nil
}

// boundContent is every digest a live binding of the ledger holds: its
// manifest and everything its closure reaches. The registry's links decide
// what a collection marks, but a link lost or unreadable must not make a
// bound tag's content garbage, so the collection keeps these too.
func (r *Runner) boundContent(ctx context.Context) (map[digest.Digest]bool, error) {
	repos, err := r.ledger.Repositories(ctx)
	if err != nil {
		return nil, fmt.Errorf("bound content: %w", err)
	}
	bound := map[digest.Digest]bool{}
	for _, repo := range repos {
		bs, err := r.ledger.Bindings(ctx, repo)
		if err != nil {
			return nil, fmt.Errorf("bound content of %s: %w", repo, err)
		}
		for _, b := range bs {
			if b.Deleted {
				continue
			}
			bound[b.Digest] = true
			for _, d := range b.Closure {
				bound[d] = true
			}
		}
	}
	return bound, nil
}

// oweGC records or clears an owed collection.
func (r *Runner) oweGC(ctx context.Context, owed bool) error {
	var v []byte
	if owed {
		v = []byte(r.now().UTC().Format(time.RFC3339Nano))
	}
	if err := r.ledger.PutJobStates(ctx, map[string][]byte{stateGCOwed: v}); err != nil {
		return fmt.Errorf("retention state: %w", err)
	}
	return nil
}

// CollectGarbage runs a mark and sweep over the embedded registry's
// filesystem storage rooted at dir (the driver's rootdirectory), like
// Distribution's MarkAndSweep: every manifest still linked in a repository
// is marked with everything it references, and unmarked blobs and layer
// links are removed. Blobs in any of protect are kept even when unmarked:
// the content the ledger's live bindings hold (GCFunc's bound), and blobs
// of pushes whose manifest has not arrived yet. The caller must keep writes
// from running meanwhile (see proxy.WriteGate).
func CollectGarbage(ctx context.Context, dir string, protect ...map[digest.Digest]bool) (GCResult, error) {
	kept := func(d digest.Digest) bool {
		for _, p := range protect {
			if p[d] {
				return true
			}
		}
		return false
	}
	var res GCResult
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": dir})
	if err != nil {
		return res, fmt.Errorf("storage driver: %w", err)
	}
	reg, err := dstorage.NewRegistry(ctx, drv, dstorage.EnableDelete)
	if err != nil {
		return res, fmt.Errorf("registry: %w", err)
	}
	if res.BytesBefore, err = blobBytes(dir); err != nil {
		return res, err
	}
	repos, ok := reg.(distribution.RepositoryEnumerator)
	if !ok {
		return res, errors.New("registry cannot enumerate repositories")
	}
	// marked holds every digest something references (kept); walked
	// the manifests whose references were followed. They differ: a
	// repository may reference another's manifest digest as a plain blob,
	// which its own walk marks but cannot follow.
	marked, walked := map[digest.Digest]bool{}, map[digest.Digest]bool{}
	unlinked := map[string][]digest.Digest{}
	// A missing directory is tolerated only where it means "nothing here":
	// no repositories at all, or a repository with no manifests or no layer
	// links. Anything else stops the collection before the sweep, since a
	// repository or manifest left unwalked leaves blobs unmarked that a
	// bound tag needs (mark never reports a missing path as one).
	var pnf driver.PathNotFoundError
	repositories := 0
	err = repos.Enumerate(ctx, func(name string) error {
		repositories++
		named, err := reference.WithName(name)
		if err != nil {
			return fmt.Errorf("repository name %s: %w", name, err)
		}
		repo, err := reg.Repository(ctx, named)
		if err != nil {
			return err
		}
		ms, err := repo.Manifests(ctx)
		if err != nil {
			return err
		}
		me, ok := ms.(distribution.ManifestEnumerator)
		if !ok {
			return errors.New("manifest service cannot enumerate")
		}
		walkedAny := false
		err = me.Enumerate(ctx, func(d digest.Digest) error {
			walkedAny = true
			return mark(ctx, ms, d, marked, walked)
		})
		if err != nil && (walkedAny || !errors.As(err, &pnf)) {
			return fmt.Errorf("repository %s: %w", name, err)
		}
		le, ok := repo.Blobs(ctx).(distribution.ManifestEnumerator)
		if !ok {
			return errors.New("blob service cannot enumerate")
		}
		err = le.Enumerate(ctx, func(d digest.Digest) error {
			if !marked[d] && !kept(d) {
				unlinked[name] = append(unlinked[name], d)
			}
			return nil
		})
		if err != nil && !errors.As(err, &pnf) {
			return fmt.Errorf("layer links of %s: %w", name, err)
		}
		return nil
	})
	if err != nil && (repositories > 0 || !errors.As(err, &pnf)) {
		return res, fmt.Errorf("mark: %w", err)
	}
	vacuum := dstorage.NewVacuum(ctx, drv)
	var sweep []digest.Digest
	err = reg.Blobs().Enumerate(ctx, func(d digest.Digest) error {
		switch {
		case marked[d]:
		case kept(d):
			res.Protected++
		default:
			sweep = append(sweep, d)
		}
		return nil
	})
	if err != nil && !errors.As(err, &pnf) {
		return res, fmt.Errorf("enumerate blobs: %w", err)
	}
	for _, d := range sweep {
		if err := vacuum.RemoveBlob(d.String()); err != nil {
			return res, fmt.Errorf("delete blob %s: %w", d, err)
		}
		res.BlobsDeleted++
	}
	for name, ds := range unlinked {
		for _, d := range ds {
			if err := vacuum.RemoveLayer(name, d); err != nil {
				return res, fmt.Errorf("delete layer link %s@%s: %w", name, d, err)
			}
		}
	}
	if res.BytesAfter, err = blobBytes(dir); err != nil {
		return res, err
	}
	res.BytesFreed = res.BytesBefore - res.BytesAfter
	return res, nil
}

// mark marks manifest d and everything it references, following child
// manifests however deep the graph goes: a blob left unmarked is swept, so
// the walk has no depth limit. Each manifest is walked once (walked); a
// digest that is only marked (referenced, but not a manifest of the
// repository that referenced it) is still walked where it is one, or its
// blobs would be swept.
func mark(ctx context.Context, ms distribution.ManifestService, d digest.Digest, marked, walked map[digest.Digest]bool) error {
	if walked[d] {
		return nil
	}
	walked[d], marked[d] = true, true
	stack := []digest.Digest{d}
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		m, err := ms.Get(ctx, d)
		if err != nil {
			// %v, not %w: a manifest that cannot be read is never "a
			// directory that is not there", whatever the driver says.
			return fmt.Errorf("manifest %s: %v", d, err)
		}
		for _, ref := range m.References() {
			marked[ref.Digest] = true
			if walked[ref.Digest] {
				continue
			}
			ok, err := ms.Exists(ctx, ref.Digest)
			if err != nil {
				return fmt.Errorf("manifest %s: %v", ref.Digest, err)
			}
			if ok {
				walked[ref.Digest] = true
				stack = append(stack, ref.Digest)
			}
		}
	}
	return nil
}

// blobBytes sums the sizes of the files under the blob store of dir.
func blobBytes(dir string) (int64, error) {
	var n int64
	root := filepath.Join(dir, "docker", "registry", "v2", "blobs")
	err := filepath.WalkDir(root, func(_ string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if e.Type().IsRegular() {
			info, err := e.Info()
			if err != nil {
				return nil
			}
			n += info.Size()
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measure blob storage: %w", err)
	}
	return n, nil
}
