package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/taglock/taglock/storage"
)

// schemaVersion is the bucket layout version stored in meta/version.
const schemaVersion = "1"

// Bucket names; the layout is documented in doc.go.
var (
	bucketMeta         = []byte("meta")
	bucketBindings     = []byte("bindings")
	bucketBindingRefs  = []byte("binding_refs")
	bucketEvents       = []byte("events")
	bucketEventsByTag  = []byte("events_by_tag")
	bucketEventsByRepo = []byte("events_by_repo")
	bucketEventsByKind = []byte("events_by_kind")
	bucketReservations = []byte("reservations")
	bucketReservedTags = []byte("reserved_tags")
	bucketReservedDigs = []byte("reserved_digests")
	bucketManifests    = []byte("manifests")
	bucketPulls        = []byte("pulls")
	bucketStats        = []byte("stats")
	bucketRepoStats    = []byte("repo_stats")
	bucketJobs         = []byte("jobs")

	allBuckets = [][]byte{
		bucketMeta, bucketBindings, bucketBindingRefs,
		bucketEvents, bucketEventsByTag, bucketEventsByRepo, bucketEventsByKind,
		bucketReservations, bucketReservedTags, bucketReservedDigs, bucketManifests, bucketPulls, bucketJobs,
		bucketStats, bucketRepoStats,
	}

	// addedBuckets are buckets later versions added to schema 1. Opening a
	// file read-write creates them (and fills their indexes); a read-only
	// open of an older file reads as if they were empty.
	addedBuckets = [][]byte{bucketReservedDigs, bucketStats, bucketRepoStats, bucketJobs}

	keyVersion = []byte("version")
)

// DefaultLockTimeout is how long Open waits for the file lock when
// Options.LockTimeout is zero.
const DefaultLockTimeout = time.Second

// Options configure Open. The zero value is ready to use.
type Options struct {
	// LockTimeout is how long Open waits for the file lock before it
	// returns storage.ErrLocked. Zero means DefaultLockTimeout (1s); a
	// negative value means try once and do not wait.
	LockTimeout time.Duration

	// ReadOnly opens the ledger read-only, under a shared lock that other
	// read-only openers may hold at the same time. The file must exist.
	// Writes return storage.ErrReadOnly. Default false.
	ReadOnly bool

	// Now is the ledger's clock, used for reservation times and for events
	// recorded without a time; the ledger stores its readings in UTC.
	// Default time.Now.
	Now func() time.Time

	// NoSync skips fsync after each write. A crash may then lose or corrupt
	// the ledger: for tests only. Default false.
	NoSync bool
}

// Ledger is a bbolt-backed ledger of tag bindings, history, reservations,
// manifest references and pulls. It is safe for concurrent use.
type Ledger struct {
	db       *bbolt.DB
	writes   *group
	path     string
	now      func() time.Time
	readOnly bool
	feed     *feed // WatchBindings
}

var _ storage.Ledger = (*Ledger)(nil)

// Open opens the ledger at path, creating the file (mode 0600), its parent
// directory (0700) and its buckets when needed. It returns an error wrapping
// ErrLocked when another process holds the file past Options.LockTimeout, and
// one wrapping ErrCorrupt when the file is not a ledger of this version, is
// empty or truncated, or has lost a bucket.
func Open(path string, opts Options) (*Ledger, error) {
	timeout := opts.LockTimeout
	switch {
	case timeout == 0:
		timeout = DefaultLockTimeout
	case timeout < 0:
		timeout = time.Nanosecond // bbolt tries once before checking the deadline
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	if !opts.ReadOnly {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("create ledger directory: %w", err)
		}
	}
	if err := checkFile(path); err != nil {
		return nil, fmt.Errorf("open ledger %s: %w", path, err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout:      timeout,
		ReadOnly:     opts.ReadOnly,
		NoSync:       opts.NoSync,
		FreelistType: bbolt.FreelistMapType,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open ledger %s: waited %s: %w", path, timeout, storage.ErrLocked)
	}
	if errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrVersionMismatch) || errors.Is(err, berrors.ErrChecksum) {
		return nil, fmt.Errorf("open ledger %s: %w: %w", path, err, storage.ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("open ledger %s: %w", path, err)
	}
	l := &Ledger{db: db, writes: &group{db: db, seal: sealStats}, path: path, now: now, readOnly: opts.ReadOnly, feed: newFeed()}
	if opts.ReadOnly {
		err = db.View(checkLayout)
	} else {
		err = db.Update(createLayout)
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open ledger %s: %w", path, err)
	}
	return l, nil
}

// createLayout creates the buckets and the schema version in a new file.
// In an existing ledger it creates only the buckets later versions added
// (addedBuckets), fills them in, and checks the rest: a file that has
// buckets but no version is not a ledger, and a ledger missing one of its
// own buckets has lost records, so both are refused rather than filled in
// with empty buckets. It counts the bindings again when the counts were not
// kept by the file's last transaction (see stats.go).
func createLayout(tx *bbolt.Tx) error {
	if meta := tx.Bucket(bucketMeta); meta != nil && meta.Get(keyVersion) != nil {
		current := statsCurrent(tx)
		for _, name := range addedBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		if err := checkLayout(tx); err != nil {
			return err
		}
		if err := indexReservedDigests(tx); err != nil {
			return err
		}
		if !current {
			if err := recount(tx); err != nil {
				return err
			}
		}
		return sealStats(tx)
	}
	if err := tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
		return fmt.Errorf("bucket %q but no schema version: not a taglock ledger: %w", name, storage.ErrCorrupt)
	}); err != nil {
		return err
	}
	for _, name := range allBuckets {
		if _, err := tx.CreateBucket(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	if err := tx.Bucket(bucketMeta).Put(keyVersion, []byte(schemaVersion)); err != nil {
		return err
	}
	return sealStats(tx)
}

// checkLayout verifies that every bucket exists and the version is known.
func checkLayout(tx *bbolt.Tx) error {
	for _, name := range allBuckets {
		if tx.Bucket(name) == nil && (tx.Writable() || !slices.ContainsFunc(addedBuckets, func(b []byte) bool { return bytes.Equal(b, name) })) {
			return fmt.Errorf("missing bucket %s: %w", name, storage.ErrCorrupt)
		}
	}
	if v := tx.Bucket(bucketMeta).Get(keyVersion); string(v) != schemaVersion {
		return fmt.Errorf("schema version %q, want %q: %w", v, schemaVersion, storage.ErrCorrupt)
	}
	return nil
}

// Close releases the file lock and closes the ledger. It waits for running
// transactions to finish. Closing a closed ledger is not an error.
func (l *Ledger) Close() error {
	l.feed.close()
	if err := l.db.Close(); err != nil {
		return fmt.Errorf("close ledger %s: %w", l.path, err)
	}
	return nil
}

// clock returns Options.Now() in UTC, without a monotonic reading, so that
// times read back from the ledger equal the times written.
func (l *Ledger) clock() time.Time { return l.now().UTC() }

// Path returns the ledger file's path.
func (l *Ledger) Path() string { return l.path }

// view runs fn in a read-only transaction after checking ctx.
func (l *Ledger) view(ctx context.Context, fn func(*bbolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return l.db.View(fn)
}

// update runs fn in a read-write transaction after checking ctx, committed
// together with concurrent writers' (see group). fn must not do anything
// slow, since every other writer waits for it, and must keep its effects
// inside the transaction, since it may run more than once.
func (l *Ledger) update(ctx context.Context, fn func(*bbolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if l.readOnly {
		return storage.ErrReadOnly
	}
	return l.writes.update(fn)
}
